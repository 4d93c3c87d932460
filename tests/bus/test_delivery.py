"""``bus.send()`` inside the gateway and :class:`bus.delivery.Sender` against a stub server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

import bus
from bus.delivery import Sender
from bus.keys import signing_key
from fleet.core.errors import BusError
from fleet.core.registry import Agent
from tests.bus.conftest import KEYS, free_port, rows


def test_send_queues_in_the_outbox(app: Flask, store: Path) -> None:
    with app.app_context():
        queued = bus.send("ezra", "request", {"q": 1}, correlation_id="c-1", ttl=30)
    assert queued["recipients"] == ["ezra"]
    (body,) = [json.loads(row[0]) for row in rows(store, "SELECT body FROM outbox")]
    assert body | {"timestamp": None} == {
        "id": queued["id"], "from": "bezalel", "to": "ezra", "type": "request",
        "payload": {"q": 1}, "timestamp": None, "correlation_id": "c-1", "ttl": 30}


def test_send_refuses_bad_fields_and_a_missing_key(app: Flask, store: Path) -> None:
    with app.app_context():
        with pytest.raises(BusError, match="invalid message: type: 'chat' is not a message "
                                           "type"):
            bus.send("ezra", "chat", 1)
        app.extensions["bus"].signer = None
        with pytest.raises(BusError, match=r"no private bus key for 'bezalel' \("):
            bus.send("ezra", "alert", 1)
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(0,)]


@pytest.fixture
def old_gateway() -> Iterator[tuple[Agent, list[str]]]:
    """A stub gateway without ``/messages/batch``; yields its agent and the paths it got."""
    stub = Flask("stub")
    seen: list[str] = []

    @stub.post("/message")
    def message() -> tuple[str, int]:
        seen.append(request.get_json()["id"])
        return "{}", 201

    server = make_server("127.0.0.1", 0, stub, threaded=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield Agent(name="old", host="127.0.0.1", role="worker", model="m", health_endpoint="",
                gateway_port=server.server_port), seen
    server.shutdown()
    thread.join()
    server.server_close()


def test_batch_falls_back_to_single_posts(old_gateway: tuple[Agent, list[str]]) -> None:
    agent, seen = old_gateway
    sender = Sender(signing_key("ezra", KEYS["ezra"]), timeout=5)
    try:
        results = sender.send(agent, [json.dumps({"id": f"m-{n}"}) for n in range(3)])
    finally:
        sender.close()
    assert [status for status, _ in results] == [201, 201, 201]
    assert seen == ["m-0", "m-1", "m-2"]


def test_unreachable_gateway_gives_status_zero() -> None:
    agent = Agent(name="gone", host="127.0.0.1", role="worker", model="m",
                  health_endpoint="", gateway_port=free_port())
    sender = Sender(signing_key("ezra", KEYS["ezra"]), timeout=1)
    results = sender.send(agent, ['{"id": "a"}', '{"id": "b"}'])
    sender.close()
    assert [status for status, _ in results] == [0, 0]
    assert results[0][1].startswith("ConnectionRefusedError: ")
