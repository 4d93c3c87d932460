"""Limits before work (issue 9): a body over the limit is refused with 413 before it is read
or its signature checked -- by ``Content-Length``, or after limit + 1 bytes of a chunked
body -- on every route; 405 answers carry ``Allow``; any id can be acknowledged."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.bus.conftest import Gateway, dumps, message, rows, signed_headers
from tests.bus.test_api import call

LIMIT = 256 * 1024
TOO_LARGE = {"error": "request body is over 262144 bytes (the bus limit); send large data by "
                      "reference (a URL in the payload)"}


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """``body`` in HTTP/1.1 chunked framing."""
    for start in range(0, len(body), size):
        piece = body[start:start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def raw(gateway: Gateway, path: str, headers: dict[str, str], body: bytes | None = None,
        chunked: bool = False, length: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """One POST over a raw socket (``length`` may claim more than is sent); the status,
    headers and body of the answer, which must come within 10 s. A gateway that answers
    before reading everything closes with unread data, which resets the connection and may
    drop its answer: then the request is tried again (3 times)."""
    for _ in range(2):
        try:
            return _raw(gateway, path, headers, body, chunked, length)
        except ConnectionResetError:
            continue
    return _raw(gateway, path, headers, body, chunked, length)


def _raw(gateway: Gateway, path: str, headers: dict[str, str], body: bytes | None,
         chunked: bool, length: int | None) -> tuple[int, dict[str, str], bytes]:
    sent = {"Host": gateway.host, "Connection": "close", **headers}
    if chunked:
        sent["Transfer-Encoding"] = "chunked"
    else:
        sent["Content-Length"] = str(len(body or b"") if length is None else length)
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
    with socket.create_connection(("127.0.0.1", gateway.agent.gateway_port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n")
        try:
            for piece in chunks(body or b"") if chunked else [body or b""]:
                sock.sendall(piece)
        except OSError:  # the gateway answered and closed before reading it all: fine
            pass
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    header_text, _, content = rest.partition(b"\r\n\r\n")
    found = dict(line.split(": ", 1) for line in header_text.decode().split("\r\n") if line)
    return int(status_line.split()[1]), found, content


@pytest.mark.parametrize("path", ["/messages/ack", "/message", "/outbox", "/health"])
def test_unsigned_huge_content_length_is_413_before_reading(bezalel_gateway: Gateway,
                                                            path: str) -> None:
    started = time.monotonic()
    status, _, content = raw(bezalel_gateway, path, {"Content-Type": "application/json"},
                             b"", length=400 * 1024 * 1024)
    assert status == 413
    assert time.monotonic() - started < 5
    assert json.loads(content) == TOO_LARGE


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_chunked_body_over_the_limit_is_413(bezalel_gateway: Gateway, signed: bool) -> None:
    body = dumps(message(id="big", payload="x" * LIMIT))
    headers = (signed_headers("ezra", body, host=bezalel_gateway.host) if signed
               else {"Content-Type": "application/json"})
    status, _, content = raw(bezalel_gateway, "/message", headers, body, chunked=True)
    assert status == 413
    assert b"262144 bytes (the bus limit)" in content
    assert rows(bezalel_gateway.store, "SELECT COUNT(*) FROM inbox WHERE id = 'big'") == [(0,)]


def test_chunked_body_under_the_limit_is_stored(bezalel_gateway: Gateway) -> None:
    body = dumps(message(id="chunked", payload="x" * (LIMIT - 1000)))
    status, _, content = raw(bezalel_gateway, "/message",
                             signed_headers("ezra", body, host=bezalel_gateway.host), body,
                             chunked=True)
    assert (status, b'"status":"stored"' in content.replace(b" ", b"")) == (201, True)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/message", {"POST"}), ("DELETE", "/messages", {"GET", "HEAD", "OPTIONS"}),
    ("GET", "/outbox", {"POST"}), ("PUT", "/messages/ack", {"POST"})])
def test_405_answers_carry_allow(client: FlaskClient, method: str, path: str,
                                 allow: set[str]) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) - {"OPTIONS"} == allow - {"OPTIONS"}
    assert response.json["error"].startswith("405 Method Not Allowed")


@pytest.mark.parametrize("message_id", ["a%2Fb", "a/b", "100%", "%25/%2F", "x?y#z"])
def test_ids_with_percent_or_slash_can_be_acknowledged(client: FlaskClient, store: Path,
                                                       message_id: str) -> None:
    body = dumps(message(id=message_id))
    assert client.post("/message", data=body,
                       headers=signed_headers("ezra", body)).status_code == 201
    response = call(client, "POST", "/messages/ack", body={"from": "ezra", "id": message_id})
    assert response.status_code == 200
    assert response.json == {"acked": True, "from": "ezra", "id": message_id}
    assert rows(store, "SELECT id FROM inbox WHERE acked_at IS NOT NULL") == [(message_id,)]


def test_ack_is_by_sender_and_id(client: FlaskClient, store: Path) -> None:
    for sender in ("ezra", "allegro"):
        body = dumps(message(id="same", **{"from": sender}))
        assert client.post("/message", data=body,
                           headers=signed_headers(sender, body)).status_code == 201
    response = call(client, "POST", "/messages/ack", body={"from": "allegro", "id": "same"})
    assert response.status_code == 200
    assert rows(store, "SELECT sender FROM inbox WHERE acked_at IS NULL") == [("ezra",)]
    missing = call(client, "POST", "/messages/ack", body={"id": "same"})
    assert missing.status_code == 400
    assert missing.json["problems"] == {"from": "missing required field"}
