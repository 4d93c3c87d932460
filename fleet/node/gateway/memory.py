"""The operator's view of the runtime's conversation memory (:mod:`fleet.node.runtime.memory`):
``GET /memory`` lists the conversations, ``GET /memory/turns?peer=P&conversation=C`` shows one,
``DELETE /memory?peer=P&conversation=C`` forgets it (``{"forgotten": N}``, 0 when there was
nothing to forget: forgetting is idempotent). A forget is accepted once per signature: the same
signed request sent again is a replay, refused (409) by the gateway's replay guard
(:mod:`bus.replay`), so it cannot forget turns stored since.

Mounted on agents with the built-in runtime. Signed requests of the operator
(:data:`bus.keys.OPERATOR`) only: unsigned or forged 401, any other key 403, the agent's own
too (an agent reads its memory itself, never through its gateway). Query values are checked
whole (``fullmatch``): a bad one is 400 naming the rule.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from bus.keys import OPERATOR
from bus.replay import ReplayError
from bus.signing import SECURITY
from bus.web import authenticate, fail, signature_id
from fleet.core.registry import NAME_RE
from fleet.node.gateway.agent import current_agent
from fleet.node.gateway.openapi import documenting, json_answer
from fleet.node.runtime.memory import (
    CONVERSATION_RULE,
    MAX_CONVERSATION,
    PEER_RULE,
    conversations,
    forget,
    is_conversation,
    shown,
    turns,
)

bp = Blueprint("memory", __name__)


def init_app(app: Flask) -> None:
    """Mount the memory API on an agent whose built-in runtime remembers; describe it in
    /openapi.json."""
    if app.extensions["fleet.agent"].runtime == "builtin":
        app.register_blueprint(bp)
        app.after_request(documenting(paths))


def operator_only(command: str = "fleet memory") -> None:
    """401 unless signed, 403 unless by the operator (the hint names ``command``, which
    signs with the operator's key). (``authenticate(owner_only=True)`` would let the agent's
    own key in, and name it as allowed when refusing another.)"""
    signer = authenticate()
    if signer != OPERATOR:
        fail(403, f"{request.path} is allowed only to the operator ({OPERATOR!r}), "
                  f"not {signer!r}", hint=f"Use `{command}` with the operator's key.")


def conversation_query() -> tuple[str, str]:
    """``peer`` and ``conversation`` from the query, each checked whole (400 naming the
    rule)."""
    peer = request.args.get("peer")
    conversation = request.args.get("conversation")
    problems = {}
    if peer is None or NAME_RE.fullmatch(peer) is None:
        problems["peer"] = f"{shown(peer)} is not {PEER_RULE}"
    if conversation is None or not is_conversation(conversation):
        problems["conversation"] = f"{shown(conversation)} is not {CONVERSATION_RULE}"
    if problems:
        fail(400, "invalid query", problems)
    assert peer is not None and conversation is not None
    return peer, conversation


@bp.get("/memory")
def list_conversations() -> ResponseReturnValue:
    """Every remembered conversation: peer, conversation, turns, last turn's time."""
    operator_only()
    return jsonify({"agent": current_agent().name,
                    "conversations": conversations(current_app.config["STATE_DIR"])})


@bp.get("/memory/turns")
def show_turns() -> ResponseReturnValue:
    """One conversation's turns, oldest first (empty when none are kept)."""
    operator_only()
    peer, conversation = conversation_query()
    return jsonify({"agent": current_agent().name, "peer": peer,
                    "conversation": conversation,
                    "turns": turns(current_app.config["STATE_DIR"], peer, conversation)})


@bp.delete("/memory")
def forget_conversation() -> ResponseReturnValue:
    """Forget one conversation: how many turns went (0: none were kept); a replay is 409."""
    operator_only()
    peer, conversation = conversation_query()
    try:
        forgotten = forget(current_app.config["STATE_DIR"], peer, conversation,
                           once=(OPERATOR, signature_id()))
    except ReplayError as exc:
        fail(409, str(exc), hint=exc.hint)
    return jsonify({"agent": current_agent().name, "peer": peer,
                    "conversation": conversation, "forgotten": forgotten})


def paths() -> dict[str, Any]:
    """The OpenAPI operations of the memory API."""
    signed: dict[str, Any] = {"security": SECURITY}
    error = json_answer("JSON error", {"type": "object", "required": ["error"]})
    refused = {"401": error, "403": error}
    query = [
        {"name": "peer", "in": "query", "required": True, "description": PEER_RULE,
         "schema": {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}},
        {"name": "conversation", "in": "query", "required": True,
         "description": CONVERSATION_RULE,
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CONVERSATION,
                    "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"}},
    ]
    return {
        "/memory": {
            "get": {"summary": "Remembered conversations (the operator only)", **signed,
                    "responses": {"200": json_answer("the conversations", {
                        "type": "object", "required": ["conversations"]}), **refused}},
            "delete": {"summary": "Forget a conversation (the operator only); forgotten: "
                                  "0 when none was kept", **signed, "parameters": query,
                       "responses": {"200": json_answer("how many turns went", {
                           "type": "object", "required": ["forgotten"]}),
                           "400": error, **refused,
                           "409": json_answer("a replay: this signed request was made before",
                                              {"type": "object", "required": ["error"]})}}},
        "/memory/turns": {
            "get": {"summary": "A conversation's turns, oldest first (the operator only)",
                    **signed, "parameters": query,
                    "responses": {"200": json_answer("the turns", {
                        "type": "object", "required": ["turns"]}), "400": error,
                        **refused}}},
    }
