"""Helpers shared by the bus blueprints: JSON errors, body limits, request signing checks."""

from __future__ import annotations

from typing import Any, NoReturn

from flask import Response, abort, g, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bus.signing import AGENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, AuthError, verify
from bus.state import state
from bus.validate import JSONError, parse_json


def fail(status: int, error: str, problems: dict[str, str] | None = None,
         hint: str | None = None, headers: dict[str, str] | None = None) -> NoReturn:
    """Stop the request with a JSON error body ``{error, problems?, hint?}``."""
    body: dict[str, Any] = {"error": error}
    if problems:
        body["problems"] = problems
    if hint:
        body["hint"] = hint
    response = make_response(jsonify(body), status)
    response.headers.update(headers or {})
    abort(response)


BUS_PATHS = ("/message", "/outbox", "/bus/", "/a2a")


def too_large() -> str:
    """The 413 message: the limit in bytes and what to do."""
    return (f"request body is over {state().max_body} bytes (the bus limit); send large data "
            "by reference (a URL in the payload)")


def json_errors(exc: HTTPException) -> ResponseReturnValue:
    """HTTP errors (404, 405, 413, 500, ...) on bus paths as JSON ``{error}`` with the
    error's headers (405: ``Allow``); other paths keep Flask's default page."""
    if not request.path.startswith(BUS_PATHS) and exc.code != 413:
        return exc
    error = too_large() if exc.code == 413 else f"{exc.code} {exc.name}: {exc.description}"
    response: Response = jsonify({"error": error})
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, exc.code or 500


def limit_body() -> None:
    """``before_request`` for every route of the app: 413 before the body is used when it
    is over the limit. ``Content-Length`` is checked without reading; a chunked body is read
    up to limit + 1 bytes (kept on ``g`` for :func:`read_body`) and refused if there is
    more."""
    limit = state().max_body
    if request.content_length is not None:
        if request.content_length > limit:
            abort(413)
        return
    if request.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return
    chunks: list[bytes] = []
    size = 0
    stream = request.stream
    while size <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        abort(413)
    g.bus_body = b"".join(chunks)


def read_body() -> bytes:
    """The request body (at most the limit: :func:`limit_body` ran before)."""
    if "bus_body" in g:
        body: bytes = g.bus_body
        return body
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        fail(413, too_large())


def json_body() -> Any:
    """The request body as JSON (400 naming the problem: invalid, NaN, too deep)."""
    try:
        return parse_json(read_body())
    except JSONError as exc:
        fail(400, "invalid body", {"body": str(exc)})


def me() -> str:
    """The name of the agent this gateway serves."""
    return state().agent


def authenticate(owner_only: bool = False) -> str:
    """The agent that signed this request; 401 if unsigned/forged/stale, 403 if not the owner.

    ``owner_only`` endpoints (inbox, outbox, stats) accept only this agent's own key: the
    agent runtime on the node and the operator (who holds every key) can use them.
    """
    try:
        headers = {name: request.headers.get(name, "")
                   for name in (AGENT_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)}
        agent = verify(headers, state().keys, request.method, request.path,
                       request.query_string.decode("latin-1"), read_body())
    except AuthError as exc:
        fail(401, str(exc), hint=exc.hint)
    if owner_only and agent != me():
        fail(403, f"{request.path} is readable only with {me()!r}'s own key, not {agent!r}'s")
    return agent
