"""``POST /message`` and ``POST /messages/batch``: the durable receive endpoints of the bus.

A message is answered 201 only after it is committed to the store (200 when the same
``from`` + ``id`` was stored before: acknowledged again, stored once). CloudEvents come
structured (``application/cloudevents+json``) or in binary mode (``ce-*`` headers, any
``Content-Type``: the body is the data), see :mod:`bus.cloudevents`. Refusals store
nothing: 413 over the body limit (before the signature is checked), 415 for other content
types, 401 unsigned/forged/stale, 400 bad fields (each listed), 429 with ``Retry-After`` when
the sender has its inbox quota of unacknowledged messages here. A valid message whose
``ttl`` ran out is answered 200 ``{"status": "expired"}`` and not stored: the sender's
worker then gives it up (a dead letter) instead of retrying.

A batch (``{"messages": [...]}``, or a CloudEvents batch ``[event, ...]`` as
``application/cloudevents-batch+json``) is signed as a whole and committed in one
transaction; the answer has one result per message, in order: ``stored``, ``duplicate``,
``expired``, ``over_quota`` or ``invalid`` with its problems. Delivery workers use it for backlogs.
"""

from __future__ import annotations

from typing import Any, NoReturn

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from bus import cloudevents
from bus.db import write
from bus.inbox_store import OVER_QUOTA, RETRY_AFTER, store
from bus.schema import MAX_BATCH
from bus.state import state
from bus.validate import JSONError, expired, message_problems
from bus.web import authenticate, fail, json_body, me, read_body

bp = Blueprint("bus_receive", __name__)
JSON = "application/json"
CLOUDEVENTS_BATCH = cloudevents.BATCH_CONTENT_TYPE
BINARY_MARK = "ce-specversion"  # a CloudEvents binary-mode request (HTTP binding)


def signed_body(content_types: tuple[str, ...]) -> tuple[str, Any]:
    """The signing agent and the decoded JSON body, after the type and auth checks (the
    size was checked before the request reached the view)."""
    if request.mimetype not in content_types:
        binary = " (or a CloudEvents binary-mode request: ce-* headers)" if (
            cloudevents.CONTENT_TYPE in content_types) else ""
        fail(415, f"Content-Type {request.content_type!r} is not "
                  f"{' or '.join(content_types)}{binary}")
    signer = authenticate()
    return signer, json_body()


def binary_event() -> tuple[str, dict[str, Any]]:
    """The signing agent and the event of a binary-mode request (any Content-Type: the body
    is the event's data); 400 when a JSON body is not valid JSON."""
    signer = authenticate()
    try:
        event = cloudevents.from_binary(request.headers.items(), request.content_type, read_body())
    except JSONError as exc:
        fail(400, "invalid event", {"body": str(exc)})
    if len(event.get("data_base64", "")) > cloudevents.MAX_BASE64:
        fail(413, f"a binary-mode body that is not JSON is at most "
                  f"{cloudevents.MAX_BASE64 // 4 * 3} bytes (the event carries it in base64)")
    return signer, event


def check(data: Any, cloudevent: bool, signer: str,
          binary: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The message ``data`` stands for and its problems (named as the sender named them);
    a valid message from another agent than the signer has only the problem ``signer``."""
    agents = list(state().agents)
    if cloudevent:
        problems = cloudevents.event_problems(data, agents, me())
        if binary:
            problems = cloudevents.binary_names(problems)
        message = {} if problems else cloudevents.from_cloudevent(data)
    else:
        message, problems = data, message_problems(data, agents, me())
    if not problems and message["from"] != signer:
        source = "source" if cloudevent else "from"
        problems["signer"] = (f"{source} {data[source]!r} does not match the signing agent "
                              f"{signer!r}")
    return message, problems


def over_quota(sender: str) -> NoReturn:
    """429: ``sender`` has its quota of unacknowledged messages in this inbox."""
    fail(429, f"{sender!r} has {state().inbox_quota} unacknowledged messages in {me()}'s inbox "
              "(its quota); retry later", hint="The receiving agent must acknowledge messages.",
         headers={"Retry-After": str(RETRY_AFTER)})


@bp.post("/message")
def receive() -> ResponseReturnValue:
    """Store one signed message (plain JSON, or a CloudEvents structured or binary event)."""
    binary = BINARY_MARK in request.headers
    if binary:
        signer, data = binary_event()
    else:
        signer, data = signed_body((JSON, cloudevents.CONTENT_TYPE))
    cloudevent = binary or request.mimetype == cloudevents.CONTENT_TYPE
    message, problems = check(data, cloudevent, signer, binary)
    if "signer" in problems:
        fail(401, problems["signer"],
             hint="Sign a message with the key of the agent named in its `from`.")
    if problems:
        fail(400, "invalid event" if cloudevent else "invalid message", problems)
    if expired(message):
        return jsonify({"status": "expired", "id": message["id"]}), 200
    fmt = "cloudevents" if cloudevent else "fleet"
    quota = state().inbox_quota
    outcome = write(lambda db: store(db, message, fmt, quota))
    if outcome == OVER_QUOTA:
        over_quota(message["from"])
    return jsonify({"status": outcome, "id": message["id"]}), 201 if outcome == "stored" else 200


def _given_id(item: Any) -> str | None:
    """The ``id`` an item gave, for its result (None when it is not storable text)."""
    given = item.get("id") if isinstance(item, dict) else None
    if not isinstance(given, str):
        return None
    try:
        given.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return given


@bp.post("/messages/batch")
def receive_batch() -> ResponseReturnValue:
    """Store up to 500 signed messages in one transaction; one result per message."""
    signer, data = signed_body((JSON, CLOUDEVENTS_BATCH))
    cloudevent = request.mimetype == CLOUDEVENTS_BATCH
    items = data if cloudevent else data.get("messages") if isinstance(data, dict) else None
    extra = sorted(set(data) - {"messages"}) if isinstance(data, dict) else []
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH or extra:
        shape = "a JSON array of events" if cloudevent else 'a JSON object {"messages": [...]}'
        fail(400, "invalid batch", {"body": f"must be {shape} with 1 to {MAX_BATCH} items"
                                            " and nothing else"})
    checked = [check(item, cloudevent, signer) for item in items]
    fmt = "cloudevents" if cloudevent else "fleet"
    valid = [message for message, problems in checked if not problems and not expired(message)]
    quota = state().inbox_quota
    outcomes = iter(write(lambda db: [store(db, message, fmt, quota) for message in valid])
                    if valid else [])
    results: list[dict[str, Any]] = []
    for item, (message, problems) in zip(items, checked, strict=True):
        if problems:
            results.append({"id": _given_id(item), "status": "invalid", "problems": problems})
        elif expired(message):
            results.append({"id": _given_id(item), "status": "expired"})
        else:
            results.append({"id": _given_id(item), "status": next(outcomes)})
    return jsonify({"results": results})
