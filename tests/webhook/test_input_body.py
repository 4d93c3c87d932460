"""Body size under real gunicorn: a body over 1 MiB is 413 before its signature is checked,
whether it says its length (``Content-Length``) or streams it (``Transfer-Encoding: chunked``).

werkzeug stops reading a chunked body at ``MAX_CONTENT_LENGTH`` without an error (its
``LimitedStream`` returns the first bytes), so ``request.get_data()`` handed the signature
check a truncated body: 401. The receiver now reads at most 1 MiB + 1 byte itself."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from fleet.webhook.hooks import MAX_BODY_BYTES
from tests.webhook.conftest import PRODUCTION_WORKERS, Server
from tests.webhook.forge import gitea_headers, gitea_payload

pytestmark = pytest.mark.slow
TOO_LARGE = {"error": "body is larger than 1048576 bytes; a push event is far smaller, so this "
                      "is not a push this receiver takes"}


def padded_body(size: int) -> bytes:
    """A signed-able Gitea branch push of exactly ``size`` bytes."""
    payload = gitea_payload("refs/heads/main", "1f" * 20)
    payload["pad"] = ""
    filler = size - len(json.dumps(payload).encode())
    payload["pad"] = "x" * filler
    body = json.dumps(payload).encode()
    assert len(body) == size
    return body


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """``body`` in HTTP/1.1 chunked framing."""
    for start in range(0, len(body), size):
        piece = body[start:start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def post(server: Server, body: bytes, chunked: bool) -> tuple[int, object]:
    """POST a correctly signed Gitea delivery of ``body``; the status and JSON answer.

    The body is sent from a thread while the answer is read, as a forge would: the receiver
    may answer 413 before it has read everything.
    """
    headers = {**gitea_headers(body), "Host": "127.0.0.1", "Connection": "close"}
    headers.update({"Transfer-Encoding": "chunked"} if chunked
                   else {"Content-Length": str(len(body))})
    head = "POST /hooks/gitea HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)

    def send() -> None:
        try:
            sock.sendall(head.encode() + b"\r\n")
            for piece in (chunks(body) if chunked else [body]):
                sock.sendall(piece)
        except OSError:
            pass  # the receiver answered and closed before taking it all

    sender = threading.Thread(target=send)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = json.loads(response.read())
        return response.status, answer
    finally:
        sock.close()
        sender.join(timeout=20)


@pytest.fixture(params=["sync", "gevent"])
def server(request: pytest.FixtureRequest, serve: Callable[..., Server]) -> Server:
    """The receiver under gunicorn's default sync workers and under the production ones."""
    return serve(workers=1, args=() if request.param == "sync" else PRODUCTION_WORKERS)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_over_1_mib_is_413(server: Server, chunked: bool) -> None:
    assert post(server, padded_body(2 * MAX_BODY_BYTES), chunked) == (413, TOO_LARGE)
    assert post(server, padded_body(MAX_BODY_BYTES + 1), chunked) == (413, TOO_LARGE)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_of_exactly_1_mib_is_read(server: Server, chunked: bool) -> None:
    status, answer = post(server, padded_body(MAX_BODY_BYTES), chunked)
    assert status == 202
    assert isinstance(answer, dict)
    assert answer["reason"] == ("ref 'refs/heads/main' is not a tag; only pushes of a tag "
                                "matching 'PROD' deploy")
