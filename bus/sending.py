"""Sending: build a message, commit it to the outbox, wake the delivery worker.

``send()`` works inside the gateway (an app context); other processes on the node and the
operator use ``POST /outbox`` (signed with this agent's own key) or :mod:`bus.client`.

Sends are idempotent on the sender's ``id``: the same id sent again (a client retrying after
a lost answer, a replayed request) queues nothing new and is answered 200 with the first
send's recipients. Without an ``id`` in the body, ``POST /outbox`` derives one from the
request's signature, so the very same signed request posted again is still queued once;
:class:`bus.client.BusClient` and ``fleet bus send`` always choose one.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from bus.db import write
from bus.errors import BusError
from bus.keys import PRIVATE_KEY_ENV, RECEIVER
from bus.outbox import enqueue
from bus.schema import send_schema
from bus.state import state
from bus.timestamps import utc_timestamp
from bus.validate import fields_problems
from bus.web import authenticate, fail, json_body, signature_id

bp = Blueprint("bus_send", __name__)


class MessageError(BusError):
    """A message to send is invalid; ``problems`` maps each bad field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        detail = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        super().__init__(f"invalid message: {detail}")


def recipients(agents: list[str], sender: str, fields: dict[str, Any]) -> list[str]:
    """Who gets the message: every other agent for a broadcast, else ``to``."""
    if fields["type"] == "broadcast":
        return [name for name in agents if name != sender]
    return [fields["to"]]


def build(agents: list[str], sender: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A complete wire message from ``fields`` (MessageError listing each bad field)."""
    problems = fields_problems(send_schema(agents), fields)
    if problems:
        raise MessageError(problems)
    message = {"id": fields.get("id") or str(uuid.uuid4()), "from": sender,
               "to": fields.get("to") or "*", "type": fields["type"],
               "payload": fields["payload"],
               "timestamp": utc_timestamp()}
    message.update({name: fields[name] for name in ("correlation_id", "reply_to", "ttl")
                    if fields.get(name) is not None})
    if "ttl" in message:
        message["ttl"] = int(message["ttl"])
    return message


def send(to: str | None, type: str, payload: Any, **options: Any) -> dict[str, Any]:
    """Queue a message from this gateway's agent durably; returns ``{id, recipients,
    status}`` (``queued``, or ``duplicate`` when ``id`` was sent before).

    ``options``: ``id``, ``correlation_id``, ``reply_to``, ``ttl``. Needs an app context.
    """
    return queue({"to": to, "type": type, "payload": payload, **options})


def queue(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate ``fields``, commit the message to the outbox (once per id) and wake the
    worker."""
    bus = state()
    if bus.signer is None:
        raise BusError(f"no private bus key for {bus.agent!r} ({PRIVATE_KEY_ENV}); messages "
                       "cannot be signed", hint=f"Run the keys phase or set {PRIVATE_KEY_ENV}.")
    agents = list(bus.agents)
    message = build(agents, bus.agent, fields)
    names = recipients(agents, bus.agent, message)
    first, queued_to = write(lambda db: enqueue(db, message, names))
    if first and bus.worker is not None:
        bus.worker.wake()
    return {"id": message["id"], "recipients": queued_to,
            "status": "queued" if first else "duplicate"}


@bp.post("/outbox")
def post_outbox() -> ResponseReturnValue:
    """Queue a message from this agent (signed by it or the operator; the receiver's key may
    queue alerts); 202 once it is in the outbox, 200 if its id was sent before (nothing
    queued again)."""
    signer = authenticate(owner_only=True, delegates=(RECEIVER,))
    fields = json_body()
    if signer == RECEIVER and not (isinstance(fields, dict) and fields.get("type") == "alert"):
        fail(403, f"the {RECEIVER!r} key may only queue messages of type 'alert'")
    if isinstance(fields, dict) and fields.get("id") is None:
        fields = {**fields, "id": signature_id()}
    if not isinstance(fields, dict):
        fail(400, "invalid message", {"body": "must be a JSON object with type and payload"})
    try:
        queued = queue(fields)
    except MessageError as exc:
        fail(400, "invalid message", exc.problems)
    return jsonify(queued), 202 if queued["status"] == "queued" else 200
