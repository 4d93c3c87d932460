"""``POST /message``: the durable receive endpoint of the bus.

A message is answered 201 only after it is committed to the store (200 when the same
``from`` + ``id`` was stored before: acknowledged again, stored once). Refusals store
nothing: 413 over 256 KiB, 415 for other content types, 401 unsigned/forged/stale, 400 bad
fields (each listed).
"""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

from bus import cloudevents
from bus.db import write
from bus.inbox import store
from bus.validate import message_problems
from bus.web import authenticate, fail, me, registry

bp = Blueprint("bus_receive", __name__)
MAX_BODY = 256 * 1024
JSON = "application/json"


@bp.post("/message")
def receive() -> ResponseReturnValue:
    """Store one signed message (plain JSON or a CloudEvents structured event)."""
    too_big = f"message body is over {MAX_BODY // 1024} KiB"
    if (request.content_length or 0) > MAX_BODY:
        fail(413, too_big, hint="Send large data by reference (a URL in the payload).")
    if request.mimetype not in (JSON, cloudevents.CONTENT_TYPE):
        fail(415, f"Content-Type {request.content_type!r} is not {JSON} or "
                  f"{cloudevents.CONTENT_TYPE}")
    request.max_content_length = MAX_BODY
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        fail(413, too_big)
    signer = authenticate()
    try:
        data = json.loads(body)
    except ValueError as exc:
        fail(400, "invalid message", {"body": f"not valid JSON: {exc}"})
    agents = list(registry().agents)
    if request.mimetype == cloudevents.CONTENT_TYPE:
        message, event_problems = cloudevents.from_cloudevent(data)
        problems = cloudevents.attribute_problems(message_problems(message, agents, me()))
        problems.update(event_problems)
        fmt = "cloudevents"
    else:
        message, problems, fmt = data, message_problems(data, agents, me()), "fleet"
    if problems:
        fail(400, "invalid message", problems)
    if message["from"] != signer:
        fail(401, f"from {message['from']!r} does not match the signing agent {signer!r}",
             hint="Sign a message with the key of the agent named in its `from`.")
    stored = write(lambda db: store(db, message, fmt))
    status = "stored" if stored else "duplicate"
    return jsonify({"status": status, "id": message["id"]}), 201 if stored else 200
