"""How every HTTP service of the fleet is served: one gunicorn setup for the gateway, the
webhook receiver and the dashboard.

This module is a gunicorn config module (``gunicorn -c python:fleet.core.serving APP``: the
gateway's systemd unit) and the settings :class:`FactoryServer` hands to gunicorn for the
``fleet ... serve`` commands (:data:`OPTIONS`), so slow or half-open clients are met the same
way everywhere:

- ``worker_class``: gunicorn's gevent worker (:mod:`fleet.core.http_worker`, which answers the
  requests gunicorn refuses in JSON): each worker waits for every connection in a greenlet, not a
  thread; a ``gthread`` worker gave each connection a thread as soon as its first bytes came,
  with no deadline for the rest, so 200 clients that never finished their headers held all
  2 x 32 threads and ``/health`` stopped answering;
- ``keepalive``: the deadline (seconds) for a request's line and headers, and how long an idle
  keep-alive connection stays open (gunicorn's gevent worker reads each request under it);
- ``worker_connections``: connections each worker serves at once (the rest wait in the listen
  backlog); kept below the 1,024 open files a systemd service gets, with room for the bus's
  SQLite files;
- ``timeout``: a worker whose event loop is stuck this long is killed and replaced;
  ``graceful_timeout``: on restart, requests in flight (a long poll: at most the bus's
  ``BUS_MAX_WAIT_MS``, 5 s) get this long;
- ``limit_request_line``, ``limit_request_fields``, ``limit_request_field_size``: gunicorn's
  own caps, where it stops reading (the worker answers past them in JSON);
  :class:`RequestLimits` answers JSON before them, at :data:`MAX_REQUEST_LINE`,
  :data:`MAX_HEADER_FIELDS` and :data:`MAX_HEADER_FIELD_SIZE`.

The long polls of the bus (``GET /messages?wait_ms=``) have their own per-process limit,
``BUS_MAX_LONG_POLLS`` (:mod:`bus.inbox`). Any of these settings can be changed for one
process with gunicorn's own ``GUNICORN_CMD_ARGS`` (e.g. ``--worker-connections 800``).

Blocking calls in a gevent worker stall every connection of that worker: the services keep
them short (SQLite transactions, signature checks); gevent patches sockets, ``time.sleep``,
threads and subprocesses, so the bus's delivery threads, HTTP calls and tool runs are
cooperative. Nothing here is imported from the controller's side: nodes load it too.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication

URL_TOO_LONG_HINT = ("Shorten the URL: no value the fleet's APIs take in a URL is this long "
                     "(check what was sent).")
worker_class = "fleet.core.http_worker.JsonErrorsWorker"  # gunicorn's gevent worker, JSON refusals
worker_connections = 500
keepalive = 5
timeout = 30
graceful_timeout = 10
limit_request_line = 8190  # gunicorn's largest
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn's default access log line has the HTTP Basic user name (``%(u)s``), where a browser
# user may type the read token: no credential goes into the log, so no user name either.
access_log_format = '%(h)s - - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

MAX_REQUEST_LINE = 4094  # bytes: method, target and version (RequestLimits: 414)
MAX_HEADER_FIELDS = 50  # header fields of one request (RequestLimits: 431)
MAX_HEADER_FIELD_SIZE = 4094  # bytes of one header field, name and value (RequestLimits: 431)
GATEWAY_WORKERS = 2
"""gunicorn worker processes of an agent's gateway: its unit (the deploy) and ``fleet gateway
serve`` both run this many (gevent: each serves many connections)."""

OPTIONS: dict[str, Any] = {
    "worker_class": worker_class,
    "worker_connections": worker_connections,
    "keepalive": keepalive,
    "timeout": timeout,
    "graceful_timeout": graceful_timeout,
    "limit_request_line": limit_request_line,
    "limit_request_fields": limit_request_fields,
    "limit_request_field_size": limit_request_field_size,
    "access_log_format": access_log_format,
}
"""The settings above by name, for :class:`FactoryServer` (each service adds ``bind``,
``workers`` and its logs)."""

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class RequestLimits:
    """WSGI middleware: a request whose line or headers are over the fleet's limits gets a
    JSON error (``{"error", "hint"}``, like every other error of our APIs) before the app
    sees it: 414 for the request line, 431 for the header fields.

    Flask's way to add one: ``app.wsgi_app = RequestLimits(app.wsgi_app)``. gunicorn's own
    limits sit above these, so the app answers first; a request past gunicorn's (a request
    line over 8,190 bytes, say) gets the same JSON shape from :mod:`fleet.core.http_worker`.
    """

    def __init__(self, app: WSGIApp, max_line: int = MAX_REQUEST_LINE,
                 max_fields: int = MAX_HEADER_FIELDS,
                 max_field_size: int = MAX_HEADER_FIELD_SIZE) -> None:
        self.app = app
        self.max_line, self.max_fields, self.max_field_size = max_line, max_fields, max_field_size

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve the request, or refuse it with a JSON 414/431."""
        problem = self.problem(environ)
        if problem is None:
            return self.app(environ, start_response)
        status, error, hint = problem
        body = json.dumps({"error": error, "hint": hint}).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))])
        return [body]

    def problem(self, environ: dict[str, Any]) -> tuple[str, str, str] | None:
        """``(status, error, hint)`` when the request is over a limit, else None."""
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get(
            "PATH_INFO", "")
        if "?" not in target and environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        line = len(f"{environ.get('REQUEST_METHOD', '')} {target} "
                   f"{environ.get('SERVER_PROTOCOL', '')}".encode("latin-1", "replace"))
        if line > self.max_line:
            return ("414 URI Too Long",
                    f"request line is {line} bytes, over the limit of {self.max_line}",
                    URL_TOO_LONG_HINT)
        fields = [(key, value) for key, value in environ.items()
                  if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")]
        if len(fields) > self.max_fields:
            return ("431 Request Header Fields Too Large",
                    f"request has {len(fields)} header fields, over the limit of "
                    f"{self.max_fields}", "Send fewer header fields.")
        for key, value in fields:
            size = len(key.removeprefix("HTTP_")) + 2 + len(str(value))
            if size > self.max_field_size:
                name = key.removeprefix("HTTP_").replace("_", "-").title()
                return ("431 Request Header Fields Too Large",
                        f"header field {name} is {size} bytes, over the limit of "
                        f"{self.max_field_size}", "Send a shorter header field.")
        return None


def limited(app: Any) -> Any:
    """``app`` (a Flask app) with :class:`RequestLimits` in front of its WSGI app."""
    app.wsgi_app = RequestLimits(app.wsgi_app)
    return app


class FactoryServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
    """gunicorn calling ``module:factory()`` in each worker, with :data:`OPTIONS` and
    ``options`` (gunicorn settings by name: ``bind``, ``workers``, logs) on top.

    No preload: the gateway's bus starts background threads when the app is created, and
    each worker needs its own (after gevent patched it).
    """

    def __init__(self, factory: str, options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = {**OPTIONS, **options}
        super().__init__()

    def load_config(self) -> None:
        """Hand the options to gunicorn."""
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        """Build the app (in each worker), behind :class:`RequestLimits`."""
        module, _, name = self.factory.partition(":")
        return limited(getattr(importlib.import_module(module), name)())
