"""Loopback HTTP stand-ins (a model provider, an earlier gateway) answering JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer_json(handler: BaseHTTPRequestHandler, status: int, data: Any) -> None:
    """Send ``data`` as a JSON response with ``status`` and its length."""
    body = json.dumps(data).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (or ``host``: a lab's bridge address) serving
    ``handler`` until :meth:`close`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.server = ThreadingHTTPServer((host, port), handler)
        self.address = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
