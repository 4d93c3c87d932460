"""Sending: build a message, commit it to the outbox, wake the delivery worker.

``send()`` works inside the gateway (an app context); other processes on the node and the
operator use ``POST /outbox`` (signed with this agent's own key) or :mod:`bus.client`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from bus.db import write
from bus.outbox import enqueue
from bus.receive import MAX_BODY
from bus.validate import fields_problems
from bus.web import authenticate, fail
from fleet.errors import BusError
from fleet.registry import Registry

bp = Blueprint("bus_send", __name__)
SEND_REQUIRED = ("type", "payload")
SEND_ALLOWED = ("id", "to", "type", "payload", "correlation_id", "reply_to", "ttl")


class MessageError(BusError):
    """A message to send is invalid; ``problems`` maps each bad field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        detail = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        super().__init__(f"invalid message: {detail}")


def recipients(registry: Registry, sender: str, fields: dict[str, Any]) -> list[str]:
    """Who gets the message: every other agent for a broadcast, else ``to``."""
    if fields["type"] == "broadcast":
        return [name for name in registry.agents if name != sender]
    return [fields["to"]]


def build(registry: Registry, sender: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A complete wire message from ``fields`` (MessageError listing each bad field)."""
    problems = fields_problems(fields, SEND_REQUIRED, SEND_ALLOWED, list(registry.agents))
    kind, to = fields.get("type"), fields.get("to")
    if kind != "broadcast" and "type" not in problems and to in (None, "*"):
        problems["to"] = f"a {kind} needs one recipient; only a broadcast goes to '*'"
    if problems:
        raise MessageError(problems)
    message = {"id": fields.get("id") or str(uuid.uuid4()), "from": sender,
               "to": fields.get("to") or "*", "type": kind, "payload": fields["payload"],
               "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")}
    message.update({name: fields[name] for name in ("correlation_id", "reply_to", "ttl")
                    if fields.get(name) is not None})
    return message


def send(to: str | None, type: str, payload: Any, **options: Any) -> dict[str, Any]:
    """Queue a message from this gateway's agent durably; returns ``{id, recipients}``.

    ``options``: ``id``, ``correlation_id``, ``reply_to``, ``ttl``. Needs an app context.
    """
    return queue({"to": to, "type": type, "payload": payload, **options})


def queue(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate ``fields``, commit the message to the outbox and wake the worker."""
    registry: Registry = current_app.extensions["fleet.registry"]
    sender: str = current_app.config["AGENT_NAME"]
    if sender not in current_app.config["BUS_KEYS"]:
        raise BusError(f"no bus key for {sender!r} in FLEET_BUS_KEYS; messages cannot be signed",
                       hint="Run the keys phase or set FLEET_BUS_KEYS.")
    message = build(registry, sender, fields)
    names = recipients(registry, sender, message)
    write(lambda db: enqueue(db, message, names))
    worker = current_app.extensions.get("bus.worker")
    if worker is not None:
        worker.wake()
    return {"id": message["id"], "recipients": names}


@bp.post("/outbox")
def post_outbox() -> ResponseReturnValue:
    """Queue a message from this agent (owner-signed); 202 once it is in the outbox."""
    if (request.content_length or 0) > MAX_BODY:
        fail(413, f"message body is over {MAX_BODY // 1024} KiB")
    authenticate(owner_only=True)
    fields = request.get_json(silent=True)
    if not isinstance(fields, dict):
        fail(400, "invalid message", {"body": "must be a JSON object with type and payload"})
    try:
        queued = queue(fields)
    except MessageError as exc:
        fail(400, "invalid message", exc.problems)
    return jsonify(queued), 202
