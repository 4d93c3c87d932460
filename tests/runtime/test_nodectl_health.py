"""``fleet-nodectl``'s look at the local gateway's /health (:func:`fleet.node.nodectl.get_health`)
against a real HTTP server on loopback: the status and JSON body of any answer, status 0 for no
answer (nothing listening, a server that never answers or stops halfway, a broken status line,
an answer over the limit), and no body for an answer that is not a JSON object."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.node import nodectl
from tests.ports import free_port

ANSWERS: dict[str, tuple[int, bytes]] = {
    "/health": (200, json.dumps({"status": "ok", "release": "abc123abc123"}).encode()),
    "/health?roundtrip=1": (503, json.dumps({"status": "fail", "problems": ["x"]}).encode()),
}


class Gateway(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]] = ANSWERS

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b"not json"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_the_status_and_body_of_a_good_and_a_failing_answer(gateway: int) -> None:
    assert nodectl.get_health(gateway) == (200, {"status": "ok", "release": "abc123abc123"})
    assert nodectl.get_health(gateway, roundtrip=True) == (
        503, {"status": "fail", "problems": ["x"]})


@pytest.mark.parametrize("body", [b"<html>up</html>", b"\xff\xfe{", b"[1, 2]",
                                  b"[" * 100_000 + b"]" * 100_000])
def test_an_answer_that_is_not_a_json_object_has_no_body(
        gateway: int, monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    monkeypatch.setattr(Gateway, "answers", {"/health": (200, body)})
    assert nodectl.get_health(gateway) == (200, None)
    assert nodectl.health_problems(200, None, {}) == ["gateway not answering on /health"]


def test_an_answer_over_the_limit_is_no_answer(gateway: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    big = b'{"x": "' + b"a" * nodectl.HEALTH_MAX_BYTES + b'"}'
    monkeypatch.setattr(Gateway, "answers", {"/health": (200, big)})
    assert nodectl.get_health(gateway) == (0, None)


def test_nothing_listening_is_status_zero() -> None:
    assert nodectl.get_health(free_port()) == (0, None)


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_a_port_out_of_range_is_no_answer_not_a_crash(port: int) -> None:
    """``--port`` is any int on the command line: connect() refuses one over 65535 or below
    0 with OverflowError, not OSError; verify must report no answer, not a traceback."""
    assert nodectl.get_health(port, timeout=0.5) == (0, None)


@pytest.mark.parametrize("reply", [b"", b"garbage\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-"])
def test_a_server_that_never_answers_or_answers_garbage_is_status_zero(reply: bytes) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)
                if reply:
                    connection.sendall(reply)
                if not reply.startswith(b"garbage"):
                    connection.recv(4096)  # holds the connection until the client gives up

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert nodectl.get_health(port, timeout=0.3) == (0, None)
        thread.join(timeout=5)
