"""The inbox's rows, without Flask: storing a received message (per-sender quota,
duplicates), acknowledging it, pruning what is old, and a row as the inbox API's JSON. Used
by the inbox API (:mod:`bus.inbox`), the receiving routes and the delivery worker."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from bus.store import bump

OVER_QUOTA = "over_quota"
EVENT = "cloudevents+attributes"  # stored format: payload column {payload, attributes, ...}
RETRY_AFTER = 30  # seconds, told to a sender over its quota


def store(db: sqlite3.Connection, message: dict[str, Any], fmt: str,
          quota: int | None = None) -> str:
    """Add a valid message to the inbox (in the caller's transaction): ``stored``,
    ``duplicate`` (same ``from`` + ``id`` stored before) or ``over_quota`` (nothing stored:
    the sender has ``quota`` unacknowledged messages here)."""
    sender = message["from"]
    if quota is not None:
        row = db.execute("SELECT unacked FROM senders WHERE sender = ?", (sender,)).fetchone()
        if row is not None and row[0] >= quota:
            known = db.execute("SELECT 1 FROM inbox WHERE sender = ? AND id = ?",
                               (sender, message["id"])).fetchone()
            if known is None:
                return OVER_QUOTA
    ttl = message.get("ttl")
    payload: Any = message["payload"]
    if fmt == "cloudevents" and ("attributes" in message or "data_base64" in message):
        fmt = EVENT  # the payload column keeps the event's other attributes too
        payload = {key: message[key] for key in ("payload", "data_base64", "attributes")
                   if key in message}
    cursor = db.execute(
        "INSERT INTO inbox (id, sender, recipient, type, payload, timestamp, correlation_id,"
        " reply_to, ttl, format, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (sender, id) DO NOTHING",
        (message["id"], sender, message["to"], message["type"],
         json.dumps(payload), message["timestamp"], message.get("correlation_id"),
         message.get("reply_to"), None if ttl is None else int(ttl), fmt, time.time()),
    )
    stored = cursor.rowcount == 1
    bump(db, "received" if stored else "duplicates")
    if stored:
        db.execute("INSERT INTO senders (sender, unacked) VALUES (?, 1) ON CONFLICT (sender)"
                   " DO UPDATE SET unacked = unacked + 1", (sender,))
    return "stored" if stored else "duplicate"


def pending_request(db: sqlite3.Connection, sender: str, message_id: str) -> bool:
    """Whether ``sender``'s request ``message_id`` is in the inbox and not yet acknowledged
    (it was signed by ``sender``: :func:`store` keeps only verified messages): a tool call
    the agent's runtime makes while answering it may act on its behalf."""
    return db.execute("SELECT 1 FROM inbox WHERE sender = ? AND id = ? AND type = 'request'"
                      " AND acked_at IS NULL", (sender, message_id)).fetchone() is not None


def acknowledge(db: sqlite3.Connection, sender: str, message_id: str,
                now: float | None = None) -> bool | None:
    """Mark ``sender``'s message ``message_id`` handled: True, False if it was before, None
    if there is no such message (in the caller's transaction)."""
    changed = db.execute(
        "UPDATE inbox SET acked_at = ? WHERE sender = ? AND id = ? AND acked_at IS NULL",
        (time.time() if now is None else now, sender, message_id)).rowcount
    if changed:
        db.execute("UPDATE senders SET unacked = unacked - 1 WHERE sender = ?", (sender,))
        return True
    found = db.execute("SELECT 1 FROM inbox WHERE sender = ? AND id = ?",
                       (sender, message_id)).fetchone()
    return False if found else None


def prune(db: sqlite3.Connection, before: float) -> int:
    """Delete inbox messages acknowledged before ``before`` and older sent ids.

    An acknowledged message is kept for the retention time so that a late re-send of it
    (same ``from`` + ``id``) is still recognised as a duplicate; likewise a sent id, so a
    send posted again is queued once. Dead letters stay until an operator acts.
    """
    removed = db.execute("DELETE FROM inbox WHERE acked_at < ?", (before,)).rowcount
    return removed + db.execute("DELETE FROM sent WHERE created_at < ?", (before,)).rowcount


def row_to_message(row: sqlite3.Row) -> dict[str, Any]:
    """An inbox row as the JSON the inbox API returns (an event's other CloudEvents
    attributes in ``attributes``, binary data in ``data_base64``)."""
    payload = json.loads(row["payload"])
    message = {
        "seq": row["seq"], "id": row["id"], "from": row["sender"], "to": row["recipient"],
        "type": row["type"], "payload": payload,
        "timestamp": row["timestamp"], "correlation_id": row["correlation_id"],
        "reply_to": row["reply_to"], "ttl": row["ttl"], "format": row["format"],
        "received_at": row["received_at"], "acked_at": row["acked_at"],
    }
    if row["format"] == EVENT:
        message.update(payload, format="cloudevents")
    return message
