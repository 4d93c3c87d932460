"""The inbox: messages this agent received, read and acknowledged by its runtime.

``GET /messages?since=SEQ&type=&limit=&correlation_id=&from=&unacked=1`` lists messages after
inbox position ``since`` (oldest first); ``POST /messages/<id>/ack`` marks one as handled.
Both need a request signed with this agent's own key.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from bus.db import bump, get_db, write
from bus.validate import TYPES
from bus.web import authenticate, fail

bp = Blueprint("bus_inbox", __name__)
MAX_LIMIT = 1000


def store(db: sqlite3.Connection, message: dict[str, Any], fmt: str) -> bool:
    """Add a valid message to the inbox (in the caller's transaction); False if (from, id)
    was stored before."""
    cursor = db.execute(
            "INSERT INTO inbox (id, sender, recipient, type, payload, timestamp, correlation_id,"
        " reply_to, ttl, format, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (sender, id) DO NOTHING",
        (message["id"], message["from"], message["to"], message["type"],
         json.dumps(message["payload"]), message["timestamp"], message.get("correlation_id"),
         message.get("reply_to"), message.get("ttl"), fmt, time.time()),
    )
    stored = cursor.rowcount == 1
    bump(db, "received" if stored else "duplicates")
    return stored


def prune(db: sqlite3.Connection, before: float) -> int:
    """Delete inbox messages acknowledged before ``before`` (and older dead letters).

    An acknowledged message is kept for the retention time so that a late re-send of it
    (same ``from`` + ``id``) is still recognised as a duplicate.
    """
    removed = db.execute("DELETE FROM inbox WHERE acked_at < ?", (before,)).rowcount
    return removed + db.execute("DELETE FROM dead_letters WHERE dead_at < ?",
                                (before,)).rowcount


def row_to_message(row: sqlite3.Row) -> dict[str, Any]:
    """An inbox row as the JSON the inbox API returns."""
    return {
        "seq": row["seq"], "id": row["id"], "from": row["sender"], "to": row["recipient"],
        "type": row["type"], "payload": json.loads(row["payload"]),
        "timestamp": row["timestamp"], "correlation_id": row["correlation_id"],
        "reply_to": row["reply_to"], "ttl": row["ttl"], "format": row["format"],
        "received_at": row["received_at"], "acked_at": row["acked_at"],
    }


def _query() -> tuple[str, list[Any], int]:
    """WHERE clause, its parameters and the limit from the query string (400 if bad)."""
    args = request.args
    problems: dict[str, str] = {}
    clauses: list[str] = ["seq > ?"]
    params: list[Any] = []
    since, limit = args.get("since", "0"), args.get("limit", "100")
    if not since.isdigit():
        problems["since"] = f"{since!r} is not an inbox position (a whole number >= 0)"
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        problems["limit"] = f"{limit!r} is not a whole number from 1 to {MAX_LIMIT}"
    kind = args.get("type")
    if kind is not None and kind not in TYPES:
        problems["type"] = f"{kind!r} is not a message type ({', '.join(TYPES)})"
    unacked = args.get("unacked", "0")
    if unacked not in ("0", "1", "true", "false"):
        problems["unacked"] = f"{unacked!r} is not 1, 0, true or false"
    unknown = set(args) - {"since", "limit", "type", "unacked", "correlation_id", "from"}
    problems.update({name: "unknown parameter" for name in sorted(unknown)})
    if problems:
        fail(400, "invalid inbox query", problems)
    params.append(int(since))
    for column, value in (("type", kind), ("correlation_id", args.get("correlation_id")),
                          ("sender", args.get("from"))):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if unacked in ("1", "true"):
        clauses.append("acked_at IS NULL")
    return " AND ".join(clauses), params, int(limit)


@bp.get("/messages")
def list_messages() -> ResponseReturnValue:
    """Inbox messages after ``since``, oldest first, with the cursor for the next call."""
    authenticate(owner_only=True)
    where, params, limit = _query()
    rows = get_db().execute(f"SELECT * FROM inbox WHERE {where} ORDER BY seq LIMIT ?",
                            [*params, limit]).fetchall()
    messages = [row_to_message(row) for row in rows]
    since = int(request.args.get("since", "0"))
    return jsonify({"messages": messages, "next": messages[-1]["seq"] if messages else since})


@bp.post("/messages/<message_id>/ack")
def ack(message_id: str) -> ResponseReturnValue:
    """Mark message ``message_id`` (optionally ``?from=AGENT``) as handled; 404 if unknown."""
    authenticate(owner_only=True)
    sender = request.args.get("from")
    sql = "UPDATE inbox SET acked_at = COALESCE(acked_at, ?) WHERE id = ?"
    params: list[Any] = [time.time(), message_id]
    if sender is not None:
        sql += " AND sender = ?"
        params.append(sender)
    count = write(lambda db: db.execute(sql, params).rowcount)
    if not count:
        origin = f" from {sender!r}" if sender is not None else ""
        fail(404, f"message {message_id!r}{origin} is not in the inbox",
             hint="List messages with GET /messages.")
    return jsonify({"acked": count, "id": message_id})
