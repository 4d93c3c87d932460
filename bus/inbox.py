"""The inbox: messages this agent received, read and acknowledged by its runtime.

``GET /messages?since=SEQ&type=&limit=&correlation_id=&from=&unacked=1&wait_ms=`` lists
messages after inbox position ``since`` (oldest first): ``{"messages", "next"}``; with
``wait_ms`` and nothing to list yet, it waits up to that long for a matching message (a long
poll: a runtime or an asker hears of a message within milliseconds without polling), or by
``Accept`` a
CloudEvents JSON batch (``application/cloudevents-batch+json``) or the first message as one
structured event (``application/cloudevents+json``; 204 when there is none), each with its
inbox position as the ``seq`` extension; ``POST /messages/ack`` with ``{"from", "id"}`` marks
one as handled (by sender and id: two senders may use the same id). The id travels in the
JSON body, not in the path, so any id (``%``, ``/``, ...) can be acknowledged as it was sent.
Both need a request signed with this agent's own key.

Each sender may have at most ``inbox_quota`` unacknowledged messages here (counted in the
``senders`` table): beyond that :func:`bus.inbox_store.store` refuses and the sender gets 429.

Long polls wait on the process's :class:`bus.watch.InboxWatch` (one watcher wakes them all),
holding no SQLite connection meanwhile. Each gateway process holds at most
``BUS_MAX_LONG_POLLS`` (``FLEET_BUS_MAX_LONG_POLLS``, 250) at once: one more is answered
429 with ``Retry-After: 1`` (no page) at once, so long polls never take every connection of
a worker (:mod:`fleet.core.serving`); :class:`bus.client.BusClient` reads that as "nothing yet".
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from bus import cloudevents
from bus.db import close_db, get_db, write
from bus.inbox_store import acknowledge, row_to_message
from bus.schema import BIGGEST, MAX_ID, query_problems
from bus.state import state
from bus.validate import TYPES, fields_problems
from bus.watch import TooManyLongPolls
from bus.web import authenticate, fail, json_body

bp = Blueprint("bus_inbox", __name__)
MAX_LIMIT = 1000
LONG_POLL_RETRY_AFTER = 1  # seconds, told to a long poll over BUS_MAX_LONG_POLLS
JSON = "application/json"
READ_TYPES = [JSON, cloudevents.BATCH_CONTENT_TYPE, cloudevents.CONTENT_TYPE]  # by Accept
QUERY: dict[str, dict[str, Any]] = {  # GET /messages, besides wait_ms (query_schema)
    "since": {"type": "integer", "minimum": 0, "maximum": BIGGEST,
              "description": "an inbox position (a whole number >= 0 in ASCII digits)"},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
              "description": f"a whole number from 1 to {MAX_LIMIT}"},
    "type": {"enum": list(TYPES), "description": f"a message type ({', '.join(TYPES)})"},
    "unacked": {"enum": ["0", "1", "true", "false"], "description": "1, 0, true or false"},
    "correlation_id": {"type": "string", "description": "a correlation id"},
    "from": {"type": "string", "description": "an agent name"},
}


def query_schema(max_wait_ms: int) -> dict[str, dict[str, Any]]:
    """``GET /messages``'s parameters (validation and /openapi.json), ``wait_ms`` up to the
    gateway's ``max_wait_ms``."""
    return {**QUERY, "wait_ms": {
        "type": "integer", "minimum": 0, "maximum": max_wait_ms,
        "description": f"milliseconds to wait for a message, 0 to {max_wait_ms}"}}


def _query() -> tuple[str, list[Any], int]:
    """WHERE clause, its parameters and the limit from the query string (400 if bad)."""
    args = request.args
    problems = query_problems(query_schema(state().max_wait_ms),
                              {name: args[name] for name in args})
    if problems:
        fail(400, "invalid inbox query", problems)
    clauses: list[str] = ["seq > ?"]
    params: list[Any] = [int(args.get("since", "0"))]
    for column, value in (("type", args.get("type")),
                          ("correlation_id", args.get("correlation_id")),
                          ("sender", args.get("from"))):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if args.get("unacked", "0") in ("1", "true"):
        clauses.append("acked_at IS NULL")
    return " AND ".join(clauses), params, int(args.get("limit", "100"))


def _wait_for_rows(sql: str, params: list[Any], wait_s: float) -> list[sqlite3.Row]:
    """The rows of ``sql``; while there are none, for up to ``wait_s`` seconds, run it again
    after each new inbox row (stored by any process: :class:`bus.watch.InboxWatch`), with
    the request's connection closed while it waits. 429 when the process holds its limit of
    long polls."""
    rows = get_db().execute(sql, params).fetchall()
    if rows or wait_s <= 0:
        return rows
    deadline = time.monotonic() + wait_s
    try:
        with state().watch.waiter() as waiter:
            rows = get_db().execute(sql, params).fetchall()  # rows added before it joined
            while not rows and (left := deadline - time.monotonic()) > 0:
                close_db()
                if waiter.wait(left):
                    rows = get_db().execute(sql, params).fetchall()
    except TooManyLongPolls as exc:
        fail(429, str(exc), hint=f"Read again after {LONG_POLL_RETRY_AFTER} s.",
             headers={"Retry-After": str(LONG_POLL_RETRY_AFTER)})
    return rows


@bp.get("/messages")
def list_messages() -> ResponseReturnValue:
    """Inbox messages after ``since``, oldest first, with the cursor for the next call."""
    authenticate(owner_only=True)
    where, params, limit = _query()
    rows = _wait_for_rows(f"SELECT * FROM inbox WHERE {where} ORDER BY seq LIMIT ?",
                          [*params, limit], int(request.args.get("wait_ms", "0")) / 1000)
    messages = [row_to_message(row) for row in rows]
    since = int(request.args.get("since", "0"))
    kind = request.accept_mimetypes.best_match(READ_TYPES, default=JSON)
    if kind == cloudevents.BATCH_CONTENT_TYPE:
        return Response(json.dumps([cloudevents.to_cloudevent(m) for m in messages]),
                        mimetype=kind)
    if kind == cloudevents.CONTENT_TYPE:
        if not messages:
            return "", 204
        return Response(json.dumps(cloudevents.to_cloudevent(messages[0])), mimetype=kind)
    return jsonify({"messages": messages, "next": messages[-1]["seq"] if messages else since})


ACK_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["from", "id"], "additionalProperties": False,
    "properties": {
        "from": {"type": "string", "minLength": 1, "maxLength": MAX_ID,
                 "description": "the sending agent's name"},
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID,
               "description": "the message's id, exactly as sent"},
    },
}


@bp.post("/messages/ack")
def ack() -> ResponseReturnValue:
    """Mark message ``{"from": SENDER, "id": ID}`` as handled; 404 if unknown."""
    authenticate(owner_only=True)
    body = json_body()
    problems = fields_problems(ACK_SCHEMA, body)
    if problems:
        fail(400, "invalid acknowledgement", problems)
    sender, message_id = body["from"], body["id"]
    done = write(lambda db: acknowledge(db, sender, message_id))
    if done is None:
        fail(404, f"message {message_id!r} from {sender!r} is not in the inbox",
             hint="List messages with GET /messages.")
    return jsonify({"acked": done, "from": sender, "id": message_id})
