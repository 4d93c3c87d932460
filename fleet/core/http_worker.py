"""The gunicorn worker of every fleet HTTP service: gunicorn's gevent worker, with requests
gunicorn itself refuses (past its own limits, malformed) answered in JSON like every other
error of our APIs, instead of its HTML page.

gunicorn documents ``worker_class`` as one of its bundled classes or the Python path of a
subclass of them; :mod:`fleet.core.serving` names this one. Only the refusal's body changes: the
status (414, 431, 400, 501, 403), the warning it logs and the closed connection stay
gunicorn's. Anything else (a crash while serving) goes to gunicorn's own handling.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from gunicorn.http import errors
from gunicorn.workers.ggevent import GeventWorker

from fleet.core.serving import URL_TOO_LONG_HINT

MALFORMED = (errors.InvalidRequestLine, errors.InvalidRequestMethod, errors.InvalidHTTPVersion,
             errors.InvalidHeader, errors.InvalidHeaderName, errors.InvalidProxyLine,
             errors.InvalidSchemeHeaders, errors.ObsoleteFolding)


def refusal(exc: BaseException, max_line: int, max_fields: int,
            max_field_size: int) -> tuple[str, str, str] | None:
    """``(status, error, hint)`` for a request gunicorn refused before the app saw it, or
    ``None`` when ``exc`` is not such a refusal."""
    if isinstance(exc, errors.LimitRequestLine):
        return ("414 URI Too Long", f"request line is over {exc.max_size} bytes, over the limit of "
                f"{max_line}", URL_TOO_LONG_HINT)
    if isinstance(exc, errors.LimitRequestHeaders):
        return ("431 Request Header Fields Too Large",
                f"request header fields are over the limits ({max_fields} fields of at most "
                f"{max_field_size} bytes)", "Send fewer and shorter header fields.")
    if isinstance(exc, errors.UnsupportedTransferCoding):
        return ("501 Not Implemented", "unsupported Transfer-Encoding",
                "Send the body with Content-Length or Transfer-Encoding: chunked.")
    if isinstance(exc, errors.ForbiddenProxyRequest | ssl.SSLError):
        return "403 Forbidden", "request forbidden", "Connect directly over HTTP."
    if isinstance(exc, MALFORMED):
        return ("400 Bad Request", f"malformed HTTP request ({type(exc).__name__})",
                "Send an HTTP/1.x request.")
    return None


class JsonErrorsWorker(GeventWorker):  # type: ignore[misc]  # gunicorn ships no types
    """gunicorn's gevent worker answering its own refusals in JSON (``{"error", "hint"}``)."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        from fleet.core.serving import MAX_HEADER_FIELD_SIZE, MAX_HEADER_FIELDS, MAX_REQUEST_LINE

        answer = refusal(exc, MAX_REQUEST_LINE, MAX_HEADER_FIELDS, MAX_HEADER_FIELD_SIZE)
        if answer is None:
            super().handle_error(req, client, addr, exc)
            return
        status, error, hint = answer
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        body = json.dumps({"error": error, "hint": hint}).encode()
        head = (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            client.sendall(head + body)
        except OSError:
            self.log.debug("Failed to send error message.")
