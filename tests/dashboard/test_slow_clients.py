"""``fleet dashboard`` keeps answering while slow clients hold connections: it runs under the
one server setup (:mod:`fleet.core.serving`: gevent, header deadline), like the gateway and the
receiver. The figures are ``bench/slow_clients.py``'s job; this checks the behaviour on the
real command: its page answers under 200 half-sent requests, and a half-sent request is
dropped at the header deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fleet.core import serving
from tests.bus.conftest import free_port
from tests.slow_clients import assert_dropped_at_header_deadline, half_open
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
HALF_REQUEST = b"GET /dashboard/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n"


@pytest.fixture
def dashboard(fleet_dir: Path) -> Iterator[str]:
    """``fleet dashboard`` on a free port, started as an operator starts it."""
    port = free_port()
    env = {**os.environ, "FLEET_RECORDS_DIR": str(fleet_dir / "records")}
    env.pop("FLEET_SECRETS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet", "--registry", str(fleet_dir / "registry.yaml"),
         "dashboard", "--port", str(port)], env=env, cwd=fleet_dir, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def serving_now() -> bool:
        assert process.poll() is None, "fleet dashboard exited"
        try:
            return requests.get(f"{url}/openapi.json", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(serving_now, timeout=60)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_page_answers_while_200_connections_hold_half_a_request(dashboard: str) -> None:
    port = int(dashboard.rsplit(":", 1)[1])
    with half_open(port, HALF_REQUEST, 200):
        for _ in range(10):
            began = time.monotonic()
            response = requests.get(f"{dashboard}/dashboard/state.json", timeout=5)
            assert response.status_code == 200
            assert [agent["name"] for agent in response.json()["agents"]] == ["alpha", "beta"]
            assert time.monotonic() - began < 3


def test_a_half_sent_request_is_dropped_at_the_header_deadline(dashboard: str) -> None:
    port = int(dashboard.rsplit(":", 1)[1])
    assert_dropped_at_header_deadline(port, HALF_REQUEST, serving.keepalive)
