"""``POST /a2a``: the A2A JSON-RPC binding the agent card advertises.

An A2A client built from the card (``SendMessage``, A2A 1.0; ``message/send``, 0.3) sends a
message; it lands in the durable inbox like any bus message: ``id`` = the A2A ``messageId``,
``from`` = the agent whose key signed the request (the card's security scheme: the bus's
signature headers, :mod:`bus.signing`), type ``request``, the A2A message kept whole as the
payload, format ``a2a``. The answer (after the commit) is an agent Message whose one data part
is ``{"status": "stored"|"duplicate", "id"}``. Refusals: 415 other content types, 401
unsigned/forged, 400 with a JSON-RPC error naming the fields, 429 over the sender's quota.

An ``httpx`` client signs its requests with :func:`httpx_signer` as a request event hook::

    httpx.AsyncClient(event_hooks={"request": [httpx_signer("ezra", key)]})
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from flask import Blueprint, Flask, abort, jsonify, make_response, request
from flask.typing import ResponseReturnValue

from bus.db import write
from bus.inbox_store import OVER_QUOTA, store
from bus.keys import SigningKey
from bus.receive import JSON, over_quota
from bus.schema import a2a_schema
from bus.signing import sign
from bus.state import state
from bus.timestamps import utc_timestamp
from bus.validate import fields_problems, message_problems
from bus.web import authenticate, fail, json_body, me

bp = Blueprint("bus_a2a", __name__)
PATH = "/a2a"
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600


def init_app(app: Flask) -> None:
    """Serve ``POST /a2a`` on an app that mounts the bus (:class:`bus.Bus`)."""
    app.register_blueprint(bp)


def rpc_error(status: int, rpc_id: Any, code: int, message: str,
              problems: dict[str, str]) -> NoReturn:
    """Stop with a JSON-RPC error (HTTP ``status``), its ``data`` naming the problems."""
    body = {"jsonrpc": "2.0", "id": rpc_id if isinstance(rpc_id, str | int) else None,
            "error": {"code": code, "message": message, "data": {"problems": problems}}}
    abort(make_response(jsonify(body), status))


def to_bus(a2a_message: dict[str, Any], sender: str) -> dict[str, Any]:
    """The inbox message an A2A message from ``sender`` stands for."""
    return {"id": a2a_message["messageId"], "from": sender, "to": me(), "type": "request",
            "payload": a2a_message, "timestamp": utc_timestamp()}


def reply(method: str, received: dict[str, Any], outcome: str) -> dict[str, Any]:
    """The JSON-RPC ``result``: an agent message with a data part (1.0 or 0.3 shapes)."""
    data = {"status": outcome, "id": received["messageId"]}
    answer: dict[str, Any] = {"messageId": str(uuid.uuid4()), "parts": [{"data": data}]}
    if "contextId" in received:
        answer["contextId"] = received["contextId"]
    if method == "message/send":  # A2A 0.3: kinds on the message and its parts
        return {**answer, "kind": "message", "role": "agent",
                "parts": [{"kind": "data", "data": data}]}
    return {"message": {**answer, "role": "ROLE_AGENT"}}


@bp.post(PATH)
def send_message() -> ResponseReturnValue:
    """A2A JSON-RPC SendMessage: store the message in the inbox, signed by its sender."""
    if request.mimetype != JSON:
        fail(415, f"Content-Type {request.content_type!r} is not {JSON} (A2A JSON-RPC)")
    signer = authenticate()
    call = json_body()
    rpc_id = call.get("id") if isinstance(call, dict) else None
    problems = fields_problems(a2a_schema(), call)
    if problems:
        invalid_call = any(name.split(".")[0] != "params" for name in problems)
        rpc_error(400, rpc_id, INVALID_REQUEST if invalid_call else INVALID_PARAMS,
                  "invalid request" if invalid_call else "invalid params", problems)
    received = call["params"]["message"]
    message = to_bus(received, signer)
    problems = message_problems(message, list(state().agents), me())
    if problems:  # e.g. a signer that is not an agent of this fleet
        rpc_error(400, rpc_id, INVALID_PARAMS, "invalid params", {
            "params.message.messageId" if name == "id" else name: problem
            for name, problem in problems.items()})
    quota = state().inbox_quota
    outcome = write(lambda db: store(db, message, "a2a", quota))
    if outcome == OVER_QUOTA:
        over_quota(signer)
    return jsonify({"jsonrpc": "2.0", "id": rpc_id,
                    "result": reply(call["method"], received, outcome)})


def httpx_signer(key: SigningKey) -> Callable[[Any], Awaitable[None]]:
    """An ``httpx.AsyncClient`` request event hook signing each request with ``key``."""

    async def hook(outgoing: Any) -> None:
        outgoing.headers.update(sign(key, outgoing.method, str(outgoing.url),
                                     outgoing.content))

    return hook
