"""The receiver keeps answering while slow clients hold connections (production workers).

Clients that send half a request used to hold both sync workers: ``/healthz`` stopped
answering. The figures (p99 under 200 such connections) are ``bench/slow_clients.py``'s
job; these tests check the behaviour: it answers, and a half-sent request is dropped at the
header deadline (gunicorn's ``keepalive`` under gevent workers).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from fleet.webhook import serving
from tests.webhook.conftest import PRODUCTION_WORKERS, Server, auth

pytestmark = pytest.mark.slow
HALF_REQUEST = (b"POST /hooks/gitea HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nX-Gitea-Event: push\r\n")


@contextlib.contextmanager
def half_open(server: Server, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that each sent half a request's headers, closed afterwards."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(HALF_REQUEST)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_healthz_answers_while_50_connections_hold_half_a_request(
        serve: Callable[..., Server]) -> None:
    server = serve(workers=2, args=PRODUCTION_WORKERS)
    with half_open(server, 50):
        for _ in range(20):
            response = requests.get(f"{server.url}/healthz", headers=auth(), timeout=2)
            assert response.status_code == 200
            assert response.json()["status"] == "ok"


def test_a_half_sent_request_is_dropped_at_the_header_deadline(
        serve: Callable[..., Server]) -> None:
    server = serve(workers=1, args=PRODUCTION_WORKERS)
    with half_open(server, 1) as (sock,):
        sock.settimeout(serving.keepalive + 10)
        began = time.monotonic()
        assert sock.recv(1024) == b""  # closed without an answer
        waited = time.monotonic() - began
    assert serving.keepalive - 1 <= waited <= serving.keepalive + 5
