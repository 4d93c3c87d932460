"""Helpers shared by the bus blueprints: JSON errors, body limits, request signing checks."""

from __future__ import annotations

import base64
import hashlib
from typing import Any, NoReturn
from urllib.parse import quote

from flask import Response, abort, g, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bus.keys import OPERATOR
from bus.signing import SIGNATURE, SIGNATURE_RE, AuthError, Target, authority, verify
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


def target() -> Target:
    """This request as RFC 9421 components: method, ``Host``, the path as sent, the query."""
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    path = raw.partition("?")[0] if raw else quote(request.path)
    if path.startswith(("http://", "https://")):  # an absolute-form request target
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    headers = request.headers
    return Target(request.method, request.scheme, authority(request.host, request.scheme),
                  path, request.query_string.decode("latin-1"), headers.get)


def authenticate(owner_only: bool = False, delegates: tuple[str, ...] = ()) -> str:
    """The identity that signed this request; 401 if unsigned/forged/stale, 403 if not
    allowed here.

    ``owner_only`` endpoints (inbox, outbox, stats, dead letters) accept this agent's own key
    and the operator's (:data:`bus.keys.OPERATOR`, which acts for any agent on its own
    gateway), and the identities in ``delegates``; other agents' keys get 403.
    """
    try:
        signer = verify(target(), read_body(), state().keys).name
    except AuthError as exc:
        fail(401, str(exc), hint=exc.hint)
    if owner_only and signer not in (me(), OPERATOR, *delegates):
        fail(403, f"{request.path} is allowed only to {me()!r} (its own key) and the operator, "
                  f"not {signer!r}")
    return signer


def header_signer() -> str | None:
    """Who signed the headers of a request whose body was refused unread (413), or None when
    the signature does not verify: for the record of the refusal, never for access."""
    try:
        return verify(target(), None, state().keys).name
    except AuthError:
        return None


def signature_id() -> str:
    """An id for a request that names none, derived from its signature's 64 bytes (what was
    signed, not how the header spells it: a label or spaces the verifier does not sign leave
    the id alone): the very same signed request sent again (a replay) gets the same id, a
    request signed anew another."""
    header = request.headers.get(SIGNATURE, "")
    match = SIGNATURE_RE.fullmatch(header)
    signature = base64.b64decode(match.group(2)) if match else header.encode()
    return "sig-" + hashlib.sha256(signature).hexdigest()[:32]
