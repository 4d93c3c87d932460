"""Helpers shared by the bus blueprints: JSON errors, request signing checks, app lookups."""

from __future__ import annotations

from typing import Any, NoReturn

from flask import abort, current_app, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from bus.signing import AuthError, verify


def fail(status: int, error: str, problems: dict[str, str] | None = None,
         hint: str | None = None) -> NoReturn:
    """Stop the request with a JSON error body ``{error, problems?, hint?}``."""
    body: dict[str, Any] = {"error": error}
    if problems:
        body["problems"] = problems
    if hint:
        body["hint"] = hint
    abort(make_response(jsonify(body), status))


BUS_PATHS = ("/message", "/outbox", "/bus/")


def json_errors(exc: HTTPException) -> ResponseReturnValue:
    """HTTP errors (404, 405, 500, ...) on bus paths as JSON ``{error}``; other paths keep
    Flask's default page."""
    if not request.path.startswith(BUS_PATHS):
        return exc
    return jsonify({"error": f"{exc.code} {exc.name}: {exc.description}"}), exc.code or 500


def me() -> str:
    """The name of the agent this gateway serves."""
    name: str = current_app.config["AGENT_NAME"]
    return name


def authenticate(owner_only: bool = False) -> str:
    """The agent that signed this request; 401 if unsigned/forged/stale, 403 if not the owner.

    ``owner_only`` endpoints (inbox, outbox, stats) accept only this agent's own key: the
    agent runtime on the node and the operator (who holds every key) can use them.
    """
    try:
        agent = verify(request.headers, current_app.config["BUS_KEYS"], request.method,
                       request.path, request.query_string.decode("latin-1"),
                       request.get_data(cache=True))
    except AuthError as exc:
        fail(401, str(exc), hint=exc.hint)
    if owner_only and agent != me():
        fail(403, f"{request.path} is readable only with {me()!r}'s own key, not {agent!r}'s")
    return agent
