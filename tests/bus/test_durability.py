"""Nothing is lost: receiver down, sender SIGKILLed, recipient gone for good (real gateways)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control.status import AgentStatus
from fleet.core.errors import BusError
from fleet.core.registry import load_registry
from fleet.dashboard.data import Dashboard, bus_gauges
from tests.bus.conftest import (
    AGENTS,
    Fleet,
    Gateway,
    rows,
    write_operator_secrets,
)
from tests.waiting import wait_for

COUNT = 1000


def send_all(gateway: Gateway, ids: list[str], sent: list[str], deadline: float = 60,
             refused: list[str] | None = None) -> None:
    """Queue one alert per id in ``gateway``'s outbox, retrying each until it is acknowledged
    (each failed try is noted in ``refused``: the gateway was down)."""
    give_up = time.monotonic() + deadline
    client = gateway.client(timeout=2)
    try:
        for message_id in ids:
            while True:
                try:
                    client.send("bezalel", "alert", {"n": message_id}, id=message_id)
                    break
                except BusError:
                    if refused is not None:
                        refused.append(message_id)
                    if time.monotonic() > give_up:
                        raise
                    client.close()
                    client = gateway.client(timeout=2)
                    time.sleep(0.05)
            sent.append(message_id)
    finally:
        client.close()


def send_parallel(gateway: Gateway, ids: list[str], sent: list[str], threads: int = 4,
                  refused: list[str] | None = None) -> None:
    """:func:`send_all` split over ``threads`` client threads."""
    workers = [threading.Thread(target=send_all, args=(gateway, ids[n::threads], sent, 60,
                                                        refused))
               for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)


def inbox_ids(store: Path) -> list[str]:
    return [row[0] for row in rows(store, "SELECT id FROM inbox WHERE sender = 'ezra'")]


def assert_all_delivered_once(fleet: Fleet, ids: list[str]) -> None:
    wait_for(lambda: len(inbox_ids(fleet["bezalel"].store)) >= COUNT, timeout=30)
    got = inbox_ids(fleet["bezalel"].store)
    assert len(got) == COUNT
    assert sorted(got) == sorted(ids)
    wait_for(lambda: rows(fleet["ezra"].store, "SELECT COUNT(*) FROM outbox") == [(0,)])
    assert rows(fleet["ezra"].store, "SELECT COUNT(*) FROM dead_letters") == [(0,)]


@pytest.mark.slow
def test_receiver_down_then_started_gets_all_once(fleet: Fleet) -> None:
    (ezra,) = fleet.start("ezra")
    ids = [f"down-{n}" for n in range(COUNT)]
    sent: list[str] = []
    send_parallel(ezra, ids, sent)
    assert sorted(sent) == sorted(ids)
    with ezra.client() as client:
        assert client.stats()["delivered"] == 0
    fleet.start("bezalel")
    assert_all_delivered_once(fleet, ids)
    with ezra.client() as client:
        stats = client.stats()
    assert stats["delivered"] == COUNT
    assert stats["retried"] > 0
    with fleet["bezalel"].client() as client:  # two gunicorn workers never sent a row twice
        assert (client.stats()["received"], client.stats()["duplicates"]) == (COUNT, 0)


@pytest.mark.slow
@pytest.mark.parametrize("receiver_up", [True, False], ids=["delivering", "backlog"])
def test_sender_killed_mid_send_loses_nothing(fleet: Fleet, receiver_up: bool) -> None:
    """SIGKILL the sender while clients queue 1,000 messages: with the receiver up (rows in
    flight), or down (a backlog in the outbox that only the restarted sender can deliver)."""
    (ezra,) = fleet.start("ezra")
    if receiver_up:
        fleet.start("bezalel")
    ids = [f"kill-{n}" for n in range(COUNT)]
    sent: list[str] = []
    refused: list[str] = []
    sender = threading.Thread(target=send_parallel, args=(ezra, ids, sent, 4, refused))
    sender.start()
    wait_for(lambda: len(sent) >= COUNT // 3, timeout=30, every=0.005)
    ezra.kill()  # SIGKILL to gunicorn master and workers: no clean-up at all
    killed_at = len(sent)
    pending = rows(ezra.store, "SELECT COUNT(*) FROM outbox")[0][0]
    if not receiver_up:
        assert pending >= killed_at
        fleet.start("bezalel")
    wait_for(lambda: refused, 30, "a client to find the sender down")  # they retry meanwhile
    ezra.start()
    sender.join(90)
    assert sorted(sent) == sorted(ids)
    assert killed_at < COUNT
    assert_all_delivered_once(fleet, ids)


@pytest.mark.slow
def test_recipient_that_never_returns_ends_in_dead_letters(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(tmp_path, {"FLEET_BUS_RETRY_BASE": "0.05", "FLEET_BUS_MAX_ATTEMPTS": "3",
                             "FLEET_BUS_POLL_SECONDS": "0.1"})
    try:
        (ezra,) = fleet.start("ezra")
        with ezra.client() as client:
            queued = client.send("ghost", "request", {"task": "x"})
            expiring = client.send("ghost", "alert", "soon stale", ttl=1)
            stats = wait_for(lambda: (s := client.stats())["dead_lettered"] == 2 and s,
                             timeout=20)
            letters = {letter["id"]: letter for letter in client.dead_letters()}
        assert stats["outbox_depth"] == 0
        assert stats["retried"] >= 2
        assert stats["delivered"] == 0
        gauges = bus_gauges(ezra.agent)  # what the dashboard shows, from the gateway's /metrics
        assert gauges["fleet_bus_dead_letters"] == 2
        registry = load_registry(fleet.registry)
        view = Dashboard(fleet.registry, tmp_path / "records")._view(
            registry, ezra.agent, AgentStatus(agent="ezra", role="orchestrator",
                                              host="127.0.0.1", ssh="ok", health="ok"),
            gauges, None, "2026-12-05T00:00:00Z")
        assert view.dead_letters == 2 and view.outbox_depth == 0
        letter = letters[queued["id"]]
        assert (letter["to"], letter["attempts"], letter["reason"]) == (
            "ghost", 3, "gave up after 3 attempts: the most allowed (max_attempts)")
        assert letter["last_error"].startswith("ConnectionRefusedError: ")
        assert letters[expiring["id"]]["reason"] in (
            "ttl expired", "gave up after 3 attempts: the most allowed (max_attempts)")
        monkeypatch.setenv("FLEET_SECRETS", str(write_operator_secrets(tmp_path)))
        shown = CliRunner().invoke(main, ["--registry", str(fleet.registry), "bus",
                                          "dead-letters", "ezra"])
        assert shown.exit_code == 0
        assert f"{queued['id']} -> ghost (request) after 3 attempts: gave up after 3 " \
               "attempts: the most allowed (max_attempts) [ConnectionRefusedError: " \
               in shown.output
    finally:
        fleet.stop()
    assert "ghost" in AGENTS
