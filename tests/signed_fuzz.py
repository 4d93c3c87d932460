"""Signing for schemathesis runs against a gateway's WSGI app: an auth provider marks a
request (``Signature: sign-me``) and a middleware signs it over the exact bytes the app
receives. Requests with other (generated, invalid or missing) auth pass unsigned."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import schemathesis
from requests.structures import CaseInsensitiveDict

SIGN_ME = "sign-me"
MARK = "HTTP_SIGNATURE"  # the scheme's own header: gone when schemathesis drops auth
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
HeadersFor = Callable[[dict[str, Any], bytes], Mapping[str, str]]


def signing(app: WSGIApp, headers_for: HeadersFor) -> WSGIApp:
    """``app`` behind a middleware that adds ``headers_for(environ, body)`` to marked
    requests."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get(MARK) != SIGN_ME:
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        for name, value in headers_for(environ, body).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return app(environ, start_response)

    return middleware


class SignInTheMiddleware:
    """Valid auth for schemathesis (register it with ``schema.auth(retry_on=[])``): headers
    the middleware replaces by a real signature (schemathesis checks that requests without
    them are refused)."""

    def get(self, case: schemathesis.Case, ctx: Any) -> str:
        return SIGN_ME

    def set(self, case: schemathesis.Case, data: str, ctx: Any) -> None:
        headers = CaseInsensitiveDict(case.headers or {})
        headers.update({"Signature-Input": "fleet=()", "Signature": data})
        case.headers = headers


def signed_as(identity: str) -> HeadersFor:
    """Headers signing the request the middleware passes as ``identity``."""
    from tests.bus.conftest import signed_headers

    def headers(environ: dict[str, Any], body: bytes) -> dict[str, str]:
        path = environ["RAW_URI"].partition("?")[0]
        return signed_headers(identity, body, path=path, method=environ["REQUEST_METHOD"],
                              query=environ.get("QUERY_STRING", ""), content_type=None,
                              host=environ["HTTP_HOST"])

    return headers
