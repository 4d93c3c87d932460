"""The client's long polls against a gateway of an earlier release, which refuses ``wait_ms``
as an unknown parameter (its documented 400 answer): the client reads it again after a short
pause instead, and asks only once."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bus.client import SHORT_POLL_S, BusClient, GatewayError
from tests.bus.conftest import KEYS
from tests.jsonhttp import LoopbackServer, answer_json


class EarlierGateway:
    """``GET /messages`` as the gateway answered it before long polls: 400 naming
    ``wait_ms`` an unknown parameter, else an empty page."""

    def __init__(self, refused: str = "wait_ms") -> None:
        self.queries: list[dict[str, list[str]]] = []
        seen = self.queries

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                seen.append(query)
                if refused in query:
                    self.answer(400, {"error": "invalid inbox query",
                                      "problems": {refused: "unknown parameter"}})
                else:
                    self.answer(200, {"messages": [], "next": 0})

            def answer(self, status: int, data: dict[str, Any]) -> None:
                answer_json(self, status, data)

            def log_message(self, *args: Any) -> None:
                pass

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.address
        self.close = self.loopback.close


@pytest.fixture
def earlier() -> Iterator[EarlierGateway]:
    gateway = EarlierGateway()
    yield gateway
    gateway.close()


def test_a_gateway_without_long_polls_is_polled(earlier: EarlierGateway) -> None:
    with BusClient(earlier.url, "bezalel", KEYS["bezalel"]) as client:
        first = client.messages(type="request", wait=2.0)
        second = client.messages(type="request", wait=2.0)
    assert first == second == {"messages": [], "next": 0}
    assert client.long_poll is False
    asked_to_wait = [query for query in earlier.queries if "wait_ms" in query]
    assert len(asked_to_wait) == 1 and asked_to_wait[0]["wait_ms"] == ["2000"]
    assert len(earlier.queries) == 3  # the refused long poll, then two plain reads
    assert SHORT_POLL_S < 0.5


def test_other_refusals_are_raised_not_taken_for_an_earlier_gateway() -> None:
    gateway = EarlierGateway(refused="type")
    try:
        with BusClient(gateway.url, "bezalel", KEYS["bezalel"]) as client, \
                pytest.raises(GatewayError) as refused:
            client.messages(type="request", wait=2.0)
    finally:
        gateway.close()
    assert refused.value.status == 400
    assert refused.value.problems == {"type": "unknown parameter"}
    assert client.long_poll is True
