"""The receiver keeps answering while slow clients hold connections (production workers).

Clients that send half a request used to hold both sync workers: ``/healthz`` stopped
answering. The figures (p99 under 200 such connections) are ``bench/slow_clients.py``'s
job; these tests check the behaviour: it answers, and a half-sent request is dropped at the
header deadline (gunicorn's ``keepalive`` under gevent workers).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from fleet.webhook import serving
from tests.slow_clients import assert_dropped_at_header_deadline, half_open
from tests.webhook.conftest import PRODUCTION_WORKERS, Server, auth

pytestmark = pytest.mark.slow
HALF_REQUEST = (b"POST /hooks/gitea HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nX-Gitea-Event: push\r\n")


def test_healthz_answers_while_50_connections_hold_half_a_request(
        serve: Callable[..., Server]) -> None:
    server = serve(workers=2, args=PRODUCTION_WORKERS)
    with half_open(server.port, HALF_REQUEST, 50):
        for _ in range(20):
            response = requests.get(f"{server.url}/healthz", headers=auth(), timeout=2)
            assert response.status_code == 200
            assert response.json()["status"] == "ok"


def test_a_half_sent_request_is_dropped_at_the_header_deadline(
        serve: Callable[..., Server]) -> None:
    server = serve(workers=1, args=PRODUCTION_WORKERS)
    assert_dropped_at_header_deadline(server.port, HALF_REQUEST, serving.keepalive)
