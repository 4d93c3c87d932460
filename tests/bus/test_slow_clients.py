"""A gateway keeps answering while 200 clients hold connections: half-open ones, or long polls.

The node runs the gateway with its unit's ``ExecStart`` (rendered here from the template, on
loopback) and ``fleet gateway serve`` runs it through :class:`fleet.core.serving.FactoryServer`:
both must keep ``/health`` answering while 200 connections never finish their headers, and
while 200 signed ``GET /messages?wait_ms=5000`` wait (gunicorn's ``gthread`` 2 x 32 threads
stopped answering at 64). The figures are ``bench/slow_clients.py``'s; these tests check the
behaviour with generous bounds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import requests

from bus.keys import PRIVATE_KEY_ENV, PUBLIC_KEYS_ENV
from fleet.control.release import release_code
from fleet.core import serving
from fleet.core.serving import GATEWAY_WORKERS
from tests.bus.conftest import KEYS, PUBLIC, Fleet, Gateway, message, signed_headers
from tests.slow_clients import assert_dropped_at_header_deadline, half_open
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
HOLD = 200
HALF_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
ANSWER_S = 3.0  # generous: on a quiet machine /health answers in milliseconds


def unit_command(port: int) -> list[str]:
    """The gateway unit's ``ExecStart``, on loopback and with this test's interpreter."""
    template = (REPO / "fleet/control/templates/fleet-agent.service.j2").read_text(encoding="utf-8")
    line = next(line for line in template.splitlines() if line.startswith("ExecStart="))
    command = jinja2.Template(line.removeprefix("ExecStart="), undefined=jinja2.StrictUndefined)
    argv = shlex.split(command.render(port=port, workers=GATEWAY_WORKERS))
    assert argv[0] == "/usr/bin/python3"
    return [sys.executable, *(arg.replace("0.0.0.0:", "127.0.0.1:") for arg in argv[1:])]


@contextlib.contextmanager
def unit_gateway(gateway: Gateway) -> Iterator[Gateway]:
    """``gateway``'s agent served the way its node serves it (the unit's command line)."""
    site = release_code(REPO, gateway.state.parent / f"{gateway.name}-release")
    env = {**gateway.env, "FLEET_AGENT": gateway.name, "FLEET_REGISTRY": str(gateway.registry),
           "FLEET_STATE_DIR": str(gateway.state), "PYTHONPATH": str(site),
           PUBLIC_KEYS_ENV: PUBLIC, PRIVATE_KEY_ENV: KEYS[gateway.name]}
    gateway.state.mkdir(parents=True, exist_ok=True)
    with gateway.log.open("ab") as log:
        process = subprocess.Popen(unit_command(gateway.agent.gateway_port), env=env,
                                   cwd=gateway.state, stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def answers() -> bool:
            assert process.poll() is None, gateway.log.read_text()[-2000:]
            try:
                with requests.get(f"{gateway.url}/openapi.json", timeout=1):
                    return True
            except requests.RequestException:
                return False

        wait_for(answers, 30, lambda: f"{gateway.name} to answer: "
                                      f"{gateway.log.read_text()[-2000:]}")
        yield gateway
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@pytest.fixture(params=["unit", "fleet gateway serve"])
def bezalel(request: pytest.FixtureRequest, fleet: Fleet) -> Iterator[Gateway]:
    """bezalel's gateway, served as its node's unit does or by ``fleet gateway serve``."""
    if request.param == "unit":
        with unit_gateway(fleet["bezalel"]) as gateway:
            yield gateway
    else:
        yield fleet.start("bezalel")[0]


def health_answers(gateway: Gateway, times: int = 10) -> list[float]:
    """``times`` GET /health, a new connection each; the seconds each took (each must
    answer with the health document within :data:`ANSWER_S`)."""
    took = []
    for _ in range(times):
        began = time.monotonic()
        response = requests.get(f"{gateway.url}/health", timeout=ANSWER_S)
        assert response.status_code in (200, 503) and "status" in response.json()
        took.append(time.monotonic() - began)
    return took


class LongPolls:
    """``count`` signed ``GET /messages?wait_ms=`` held on their own connections."""

    def __init__(self, gateway: Gateway, count: int, wait_ms: int = 5_000) -> None:
        self.gateway, self.count, self.wait_ms = gateway, count, wait_ms
        self.answers: list[tuple[float, int, dict[str, Any]]] = []
        self.sent = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(count)]

    def _poll(self) -> None:
        query = f"wait_ms={self.wait_ms}"
        headers = signed_headers("bezalel", b"", path="/messages", method="GET", query=query,
                                 content_type=None, host=self.gateway.host)
        connection = http.client.HTTPConnection("127.0.0.1", self.gateway.agent.gateway_port,
                                                timeout=30)
        try:
            connection.request("GET", f"/messages?{query}", headers=headers)
            self.sent.release()
            response = connection.getresponse()
            answer = (time.monotonic(), response.status, json.loads(response.read()))
        finally:
            connection.close()
        with self.lock:
            self.answers.append(answer)

    def __enter__(self) -> LongPolls:
        for thread in self.threads:
            thread.start()
        for _ in self.threads:
            assert self.sent.acquire(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


def test_health_answers_while_200_connections_hold_half_a_request(bezalel: Gateway) -> None:
    with half_open(bezalel.agent.gateway_port, HALF_REQUEST, HOLD):
        assert max(health_answers(bezalel)) < ANSWER_S


def test_a_half_sent_request_is_dropped_at_the_header_deadline(bezalel: Gateway) -> None:
    assert_dropped_at_header_deadline(bezalel.agent.gateway_port, HALF_REQUEST,
                                      serving.keepalive)


def test_health_and_sends_answer_while_200_long_polls_wait_and_one_message_wakes_them_all(
        bezalel: Gateway) -> None:
    with LongPolls(bezalel, HOLD) as polls:
        assert max(health_answers(bezalel)) < ANSWER_S
        with bezalel.client(timeout=ANSWER_S) as me:
            me.send("ezra", "request", {"n": 1})  # queued in bezalel's outbox
        assert polls.answers == []  # all still held
        body = json.dumps(message(id="wake")).encode()
        arrived = time.monotonic()
        response = requests.post(f"{bezalel.url}/message", data=body, timeout=ANSWER_S,
                                 headers=signed_headers("ezra", body, host=bezalel.host))
        assert response.status_code in (200, 201, 202), response.text
    assert len(polls.answers) == HOLD
    for answered, status, page in polls.answers:
        assert status == 200
        assert [m["id"] for m in page["messages"]] == ["wake"]
        assert answered - arrived < ANSWER_S  # woken by the message, not at wait_ms


def test_over_the_long_poll_limit_a_poll_gets_429_with_retry_after(
        fleet: Fleet) -> None:
    gateway = fleet["bezalel"]
    gateway.env["FLEET_BUS_MAX_LONG_POLLS"] = "2"
    fleet_gateway = gateway.start()
    with LongPolls(fleet_gateway, 2 * 2 + 1, wait_ms=3_000) as polls:  # 2 workers x 2, +1
        pass
    statuses = sorted(status for _, status, _ in polls.answers)
    assert statuses.count(429) >= 1
    refused = next(page for _, status, page in polls.answers if status == 429)
    assert "BUS_MAX_LONG_POLLS" in str(refused["error"])


BAD_REQUESTS: list[tuple[str, Callable[[str], bytes], int, str]] = [
    ("request line", lambda host: b"GET /health?x=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: "
     + host.encode() + b"\r\n\r\n", 414, "request line is 5023 bytes, over the limit of 4094"),
    ("header fields", lambda host: b"GET /health HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
     + b"".join(b"X-F%d: 1\r\n" % n for n in range(60)) + b"\r\n", 431,
     "request has 61 header fields, over the limit of 50"),
    ("header field", lambda host: b"GET /health HTTP/1.1\r\nHost: " + host.encode()
     + b"\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431,
     "header field X-Big is 5007 bytes, over the limit of 4094"),
    # past gunicorn's own limits, where it stops reading: still JSON, not its HTML page
    ("request line past gunicorn's", lambda host: b"GET /health?x=" + b"a" * 9000
     + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n", 414,
     "request line is over 8190 bytes, over the limit of 4094"),
    ("header fields past gunicorn's", lambda host: b"GET /health HTTP/1.1\r\nHost: "
     + host.encode() + b"\r\n" + b"".join(b"X-F%d: 1\r\n" % n for n in range(150))
     + b"\r\n", 431, "request header fields are over the limits (50 fields of at most 4094 "
     "bytes)"),
    ("header field past gunicorn's", lambda host: b"GET /health HTTP/1.1\r\nHost: "
     + host.encode() + b"\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431,
     "request header fields are over the limits (50 fields of at most 4094 bytes)"),
    ("malformed request line", lambda host: b"HELLO\r\n\r\n", 400,
     "malformed HTTP request (InvalidRequestLine)"),
    ("unknown HTTP version", lambda host: b"GET /health HTTP/9.9\r\nHost: " + host.encode()
     + b"\r\n\r\n", 400, "malformed HTTP request (InvalidHTTPVersion)"),
]


@pytest.mark.parametrize(("what", "raw", "status", "error"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_request_over_the_limits_gets_a_json_error(
        bezalel: Gateway, what: str, raw: Callable[[str], bytes], status: int,
        error: str) -> None:
    with socket.create_connection(("127.0.0.1", bezalel.agent.gateway_port), timeout=5) as sock:
        sock.sendall(raw(bezalel.host))
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    assert response.status == status, body[:300]
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body)["error"] == error
