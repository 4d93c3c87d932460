"""A kept-alive connection the gateway closes just as the client reuses it (its keep-alive
deadline and the client's next request crossing): a read is sent again on a new connection,
a write is not repeated by ``call``."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from bus.client import BusClient, GatewayError
from tests.bus.conftest import KEYS
from tests.jsonhttp import LoopbackServer, answer_json


class ClosingGateway:
    """Answers the first request of each connection with keep-alive, then resets the
    connection (RST) on its second request without answering it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []  # (method, request number on its connection)
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            served = 0

            def handle_one(self) -> None:
                self.served += 1
                seen.append((self.command, self.served))
                if self.served == 1:
                    length = int(self.headers.get("Content-Length") or 0)
                    self.rfile.read(length)
                    answer_json(self, 200, {"messages": [], "next": 0})
                    return
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            do_GET = do_POST = handle_one

            def log_message(self, *args: Any) -> None:
                pass

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.address


@pytest.fixture
def closing() -> Iterator[ClosingGateway]:
    gateway = ClosingGateway()
    yield gateway
    gateway.loopback.close()


def test_a_read_on_a_connection_reset_at_reuse_is_sent_again(closing: ClosingGateway) -> None:
    with BusClient(closing.url, "bezalel", KEYS["bezalel"]) as client:
        assert client.messages() == {"messages": [], "next": 0}
        assert client.messages() == {"messages": [], "next": 0}
    assert closing.seen == [("GET", 1), ("GET", 2), ("GET", 1)]


def test_a_write_on_a_connection_reset_at_reuse_is_not_repeated(
        closing: ClosingGateway) -> None:
    with BusClient(closing.url, "bezalel", KEYS["bezalel"]) as client:
        client.messages()
        with pytest.raises(GatewayError, match="cannot reach the gateway") as failed:
            client.ack("ezra", "m-1")
    assert failed.value.retryable
    assert closing.seen == [("GET", 1), ("POST", 2)]
