"""Loopback HTTP stand-ins (a model provider, an earlier gateway) answering JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from werkzeug.serving import make_server


def answer_json(handler: BaseHTTPRequestHandler, status: int, data: Any) -> None:
    """Send ``data`` as a JSON response with ``status`` and its length."""
    body = json.dumps(data).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Serving:
    """A server object (``serve_forever``, ``shutdown``, ``server_close``) served in a thread
    until :meth:`close`."""

    def __init__(self, server: Any, address: str) -> None:
        self.server = server
        self.address = address
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.address

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopbackServer(Serving):
    """A threaded HTTP server on 127.0.0.1 (or ``host``: a lab's bridge address) serving
    ``handler`` until :meth:`close`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0,
                 host: str = "127.0.0.1") -> None:
        server = ThreadingHTTPServer((host, port), handler)
        super().__init__(server, f"http://{host}:{server.server_address[1]}")


class WsgiLoopback(Serving):
    """A WSGI ``app`` (a Flask stand-in, git's CGI front) served on 127.0.0.1 (or ``host``;
    ``port``, else a free one) by werkzeug's threaded server until :meth:`close`, or while
    inside ``with`` (which yields its base URL)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        server = make_server(host, port, app, threaded=True)
        super().__init__(server, f"http://{host}:{server.server_port}")
