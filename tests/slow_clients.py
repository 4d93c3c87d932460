"""Slow clients for the servers' tests: connections that send half a request and stop."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator


@contextlib.contextmanager
def half_open(port: int, head: bytes, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections to 127.0.0.1:``port`` that each sent ``head`` (half a request's
    headers, never the blank line), closed afterwards."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(head)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def assert_dropped_at_header_deadline(port: int, head: bytes, keepalive: float) -> None:
    """A connection that sent only ``head`` is closed without an answer about ``keepalive``
    seconds later (gunicorn's header deadline under gevent workers)."""
    with half_open(port, head, 1) as (sock,):
        sock.settimeout(keepalive + 10)
        began = time.monotonic()
        assert sock.recv(1024) == b""  # closed without an answer
        waited = time.monotonic() - began
    assert keepalive - 1 <= waited <= keepalive + 5
