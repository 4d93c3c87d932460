"""Real gateways (``fleet gateway serve`` processes on loopback) talking over the bus."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from fleet.cli import main
from fleet.core.errors import BusError
from tests.bus.conftest import (
    UNTRUSTED_KEY,
    Fleet,
    Gateway,
    dumps,
    message,
    signed_headers,
    write_operator_secrets,
)
from tests.waiting import wait_for


def test_request_response_round_trip(fleet: Fleet) -> None:
    ezra, bezalel = fleet.start("ezra", "bezalel")

    def worker_runtime() -> None:
        with bezalel.client() as runtime:
            request = wait_for(lambda: runtime.messages(type="request")["messages"])[0]
            runtime.reply(request, {"verdict": "approved", "task": request["payload"]["task"]})
            runtime.ack(request["from"], request["id"])

    responder = threading.Thread(target=worker_runtime)
    responder.start()
    with ezra.client() as orchestrator:
        response = orchestrator.request("bezalel", {"task": "review"}, timeout=15)
    responder.join(10)
    assert response["type"] == "response"
    assert response["from"] == "bezalel"
    assert response["payload"] == {"verdict": "approved", "task": "review"}
    with bezalel.client() as runtime:
        request = runtime.messages()["messages"][0]
    assert response["correlation_id"] == request["correlation_id"]
    assert request["reply_to"] == "ezra"
    assert request["acked_at"] is not None


def test_request_times_out_with_bus_error(fleet: Fleet) -> None:
    ezra, _ = fleet.start("ezra", "bezalel")
    with ezra.client() as orchestrator, pytest.raises(BusError) as raised:
        orchestrator.request("bezalel", {"task": "ignored"}, timeout=0.5)
    assert isinstance(raised.value, TimeoutError)
    assert str(raised.value).startswith("no response from 'bezalel' to request ")
    assert str(raised.value).endswith(" within 0.5 s")


def test_broadcast_reaches_every_other_agent(fleet: Fleet) -> None:
    ezra, bezalel, allegro = fleet.start("ezra", "bezalel", "allegro")
    with ezra.client() as orchestrator:
        queued = orchestrator.send(None, "broadcast", {"notice": "deploy at 3"})
        assert queued["recipients"] == ["bezalel", "allegro", "ghost"]
        for gateway in (bezalel, allegro):
            with gateway.client() as runtime:
                got = wait_for(lambda r=runtime: r.messages()["messages"])
                assert [(m["id"], m["from"], m["to"], m["type"], m["payload"]) for m in got] == [
                    (queued["id"], "ezra", gateway.name, "broadcast", {"notice": "deploy at 3"})]
        stats = wait_for(lambda: (s := orchestrator.stats())["delivered"] == 2 and s)
        assert stats["outbox_depth"] == 1  # ghost never answers: still being retried
        assert orchestrator.messages()["messages"] == []


def test_cli_send_tail_and_stats(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet.start("ezra", "bezalel")
    monkeypatch.setenv("FLEET_SECRETS", str(write_operator_secrets(fleet.folder)))
    runner = CliRunner()
    base = ["--registry", str(fleet.registry), "bus"]
    sent = runner.invoke(main, [*base, "send", "bezalel", "alert", '{"disk": "full"}'])
    assert sent.exit_code == 0, sent.output
    assert sent.output.startswith("queued ") and sent.output.endswith(
        " in ezra's outbox for bezalel\n")
    wait_for(lambda: "disk" in runner.invoke(main, [*base, "tail", "bezalel"]).output)
    tail = runner.invoke(main, [*base, "tail", "bezalel"]).output
    assert " ezra -> bezalel alert id=" in tail and tail.endswith(' {"disk": "full"}\n')
    stats = runner.invoke(main, [*base, "stats", "ezra"])
    assert "delivered: 1\n" in stats.output
    refused = runner.invoke(main, [*base, "send", "nobody", "alert", "x"])
    assert refused.exit_code == 1
    assert refused.output.startswith(
        "Error: POST /outbox: HTTP 400: invalid message; to: 'nobody' is not an agent")


# Refusals against one running gateway: each answered with its status and nothing stored.

def post(gateway: Gateway, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{gateway.url}/message", data=body, headers=headers, timeout=5)


def refusals(host: str) -> dict[str, tuple[bytes, dict[str, str], int]]:
    """Each refused request to the gateway at ``host``: body, headers, expected status."""
    good = dumps(message(id="refused"))
    big = dumps(message(id="big", payload="x" * 300_000))
    bad_type = dumps(message(id="t", type="gossip"))
    stranger = dumps(message(id="s", to="allegro"))
    return {
        "unsigned": (good, {"Content-Type": "application/json"}, 401),
        "forged": (good, signed_headers("ezra", good, key=UNTRUSTED_KEY, host=host), 401),
        "signed for another gateway": (good, signed_headers("ezra", good), 401),
        "stale replay": (good, signed_headers("ezra", good, now=time.time() - 600, host=host),
                         401),
        "signed by another agent": (good, signed_headers("allegro", good, host=host), 401),
        "too big": (big, signed_headers("ezra", big, host=host), 413),
        "wrong content type": (good, signed_headers("ezra", good, content_type="text/xml",
                                                    host=host), 415),
        "unknown type": (bad_type, signed_headers("ezra", bad_type, host=host), 400),
        "not for this agent": (stranger, signed_headers("ezra", stranger, host=host), 400),
    }


@pytest.mark.parametrize("case", list(refusals("localhost")))
def test_refused_and_not_stored(bezalel_gateway: Gateway, case: str) -> None:
    body, headers, status = refusals(bezalel_gateway.host)[case]
    with post(bezalel_gateway, body, headers) as response:
        assert response.status_code == status
        answer: dict[str, Any] = response.json()
    assert answer["error"]
    with bezalel_gateway.client() as runtime:
        assert runtime.messages()["messages"] == []
        assert runtime.stats()["received"] == 0


def test_replay_within_the_window_is_stored_once(bezalel_gateway: Gateway) -> None:
    body = dumps(message(id="replayed"))
    headers = signed_headers("ezra", body, host=bezalel_gateway.host)
    with post(bezalel_gateway, body, headers) as first, post(bezalel_gateway, body,
                                                             headers) as second:
        assert (first.status_code, second.status_code) == (201, 200)
    with bezalel_gateway.client() as runtime:
        assert [m["id"] for m in runtime.messages()["messages"]] == ["replayed"]


def test_cloudevent_from_a_plain_http_client(fleet: Fleet) -> None:
    (bezalel,) = fleet.start("bezalel")
    sent = datetime.now(UTC).isoformat(timespec="seconds")
    event = {"specversion": "1.0", "id": "ce-42", "source": "allegro", "type": "fleet.request",
             "time": sent, "to": "bezalel", "replyto": "allegro",
             "correlationid": "corr-7", "ttl": 120, "data": {"question": "status?"}}
    body = dumps(event)
    headers = signed_headers("allegro", body, content_type="application/cloudevents+json",
                             host=bezalel.host)
    with post(bezalel, body, headers) as response:
        assert response.status_code == 201
    with bezalel.client() as runtime:
        (got,) = runtime.messages()["messages"]
    assert {k: got[k] for k in ("id", "from", "to", "type", "payload", "timestamp",
                                "correlation_id", "reply_to", "ttl", "format")} == {
        "id": "ce-42", "from": "allegro", "to": "bezalel", "type": "request",
        "payload": {"question": "status?"}, "timestamp": sent,
        "correlation_id": "corr-7", "reply_to": "allegro", "ttl": 120, "format": "cloudevents"}
