"""A deployed gateway (Debian 12, Python 3.11, the release's gevent) keeps answering ``/health``
while 200 connections hold half a request and while 200 signed long polls wait.

Run alone with: ``FLEET_TEST_LAB=h2 pytest -m lab tests/deploy/test_slow_clients_lab.py``
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bus.client import BusClient
from bus.keys import OPERATOR, PRIVATE_KEY_ENV, signing_key
from fleet.core.registry import load_registry
from tests.deploy.conftest import SECRETS, Fleet, own_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT = "ezra-primary"
HOLD = 200
ANSWER_S = 3.0


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A one-node lab with the agent deployed."""
    with own_lab("slow", tmp_path_factory.mktemp("slow"), nodes=1) as fleet:
        done = fleet.run("deploy")
        assert done.returncode == 0, done.stdout + done.stderr
        yield fleet


def health_ok(url: str, times: int = 10) -> None:
    """``times`` GET /health, each answered 200 within :data:`ANSWER_S`."""
    for _ in range(times):
        response = requests.get(f"{url}/health", timeout=ANSWER_S)
        assert response.status_code == 200, response.text


@contextlib.contextmanager
def half_open(host: str, port: int, count: int) -> Iterator[None]:
    """``count`` connections that each sent half a request's headers."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(sock)
        yield
    finally:
        for sock in sockets:
            sock.close()


def test_the_node_serves_the_gateway_with_gevent_workers(deployed: Fleet) -> None:
    shown = deployed.ssh(AGENT, f"systemctl show -p ExecStart fleet-agent-{AGENT}.service; "
                         "python3 --version")
    assert "--config python:fleet.serving" in shown and "Python 3.11" in shown
    journal = deployed.ssh(AGENT, f"journalctl -u fleet-agent-{AGENT}.service -b --no-pager")
    # gevent's, JSON errors
    assert "Using worker: fleet.core.http_worker.JsonErrorsWorker" in journal


def test_health_answers_while_200_clients_hold_half_a_request(deployed: Fleet) -> None:
    agent = load_registry(deployed.registry).get(AGENT)
    with half_open(agent.host, agent.gateway_port, HOLD):
        health_ok(agent.gateway_url)


def test_health_answers_while_200_signed_long_polls_wait(deployed: Fleet,
                                                         tmp_path: Path) -> None:
    registry = load_registry(deployed.registry)
    agent = registry.get(AGENT)
    identities: dict[str, dict[str, str]] = SECRETS["identities"]  # type: ignore[assignment]
    key = signing_key(OPERATOR, identities[OPERATOR][PRIVATE_KEY_ENV])
    answered: list[float] = []
    lock = threading.Lock()

    def poll() -> None:
        with BusClient(agent.gateway_url, AGENT, key, timeout=15) as client:
            client.messages(since=10**9, wait=5.0)  # nothing will come: held 5 s
        with lock:
            answered.append(time.monotonic())

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(HOLD)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    health_ok(agent.gateway_url)
    assert not answered or min(answered) - began > 4  # they were held meanwhile
    for thread in threads:
        thread.join(timeout=30)
    assert len(answered) == HOLD
