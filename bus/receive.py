"""``POST /message`` and ``POST /messages/batch``: the durable receive endpoints of the bus.

A message is answered 201 only after it is committed to the store (200 when the same
``from`` + ``id`` was stored before: acknowledged again, stored once). Refusals store
nothing: 413 over 256 KiB, 415 for other content types, 401 unsigned/forged/stale, 400 bad
fields (each listed).

A batch (``{"messages": [...]}``, or a CloudEvents batch ``[event, ...]`` as
``application/cloudevents-batch+json``) is signed as a whole and committed in one
transaction; the answer has one result per message, in order: ``stored``, ``duplicate`` or
``invalid`` with its problems. Delivery workers use it for backlogs.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

from bus import cloudevents
from bus.db import write
from bus.inbox import store
from bus.validate import message_problems
from bus.web import authenticate, fail, me
from fleet.gateway import current_registry

bp = Blueprint("bus_receive", __name__)
MAX_BODY = 256 * 1024
MAX_BATCH = 500
JSON = "application/json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"


def signed_body(content_types: tuple[str, ...]) -> tuple[str, Any]:
    """The signing agent and the decoded JSON body, after the size, type and auth checks."""
    too_big = f"message body is over {MAX_BODY // 1024} KiB"
    if (request.content_length or 0) > MAX_BODY:
        fail(413, too_big, hint="Send large data by reference (a URL in the payload).")
    if request.mimetype not in content_types:
        fail(415, f"Content-Type {request.content_type!r} is not {' or '.join(content_types)}")
    request.max_content_length = MAX_BODY
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        fail(413, too_big)
    signer = authenticate()
    try:
        return signer, json.loads(body)
    except ValueError as exc:
        fail(400, "invalid message", {"body": f"not valid JSON: {exc}"})


def check(data: Any, cloudevent: bool, signer: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The message ``data`` stands for and its problems (named as the sender named them);
    a valid message from another agent than the signer has only the problem ``signer``."""
    agents = list(current_registry().agents)
    if cloudevent:
        message, event_problems = cloudevents.from_cloudevent(data)
        problems = cloudevents.attribute_problems(message_problems(message, agents, me()))
        problems.update(event_problems)
    else:
        message, problems = data, message_problems(data, agents, me())
    if not problems and message["from"] != signer:
        problems["signer"] = (f"from {message['from']!r} does not match the signing agent "
                              f"{signer!r}")
    return message, problems


@bp.post("/message")
def receive() -> ResponseReturnValue:
    """Store one signed message (plain JSON or a CloudEvents structured event)."""
    signer, data = signed_body((JSON, cloudevents.CONTENT_TYPE))
    cloudevent = request.mimetype == cloudevents.CONTENT_TYPE
    message, problems = check(data, cloudevent, signer)
    if "signer" in problems:
        fail(401, problems["signer"],
             hint="Sign a message with the key of the agent named in its `from`.")
    if problems:
        fail(400, "invalid message", problems)
    fmt = "cloudevents" if cloudevent else "fleet"
    stored = write(lambda db: store(db, message, fmt))
    status = "stored" if stored else "duplicate"
    return jsonify({"status": status, "id": message["id"]}), 201 if stored else 200


@bp.post("/messages/batch")
def receive_batch() -> ResponseReturnValue:
    """Store up to 500 signed messages in one transaction; one result per message."""
    signer, data = signed_body((JSON, CLOUDEVENTS_BATCH))
    cloudevent = request.mimetype == CLOUDEVENTS_BATCH
    items = data if cloudevent else data.get("messages") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        shape = "a JSON array of events" if cloudevent else 'a JSON object {"messages": [...]}'
        fail(400, "invalid batch", {"body": f"must be {shape} with 1 to {MAX_BATCH} items"})
    checked = [check(item, cloudevent, signer) for item in items]
    fmt = "cloudevents" if cloudevent else "fleet"
    valid = [message for message, problems in checked if not problems]
    stored = iter(write(lambda db: [store(db, message, fmt) for message in valid]))
    results: list[dict[str, Any]] = []
    for item, (_, problems) in zip(items, checked, strict=True):
        given = item.get("id") if isinstance(item, dict) else None
        if problems:
            results.append({"id": given, "status": "invalid", "problems": problems})
        else:
            results.append({"id": given, "status": "stored" if next(stored) else "duplicate"})
    return jsonify({"results": results})
