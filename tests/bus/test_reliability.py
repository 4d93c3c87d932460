"""Nothing lost, nothing twice (issue 9): idempotent sends, a retry schedule that outlasts a
day-long outage, ``ttl`` enforced by the receiver, dead letters kept and re-sendable, and a
per-sender inbox quota answered with 429."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from bus import inbox_store, outbox
from bus.client import BusClient, GatewayError
from bus.store import connect
from bus.worker import Settings
from fleet.cli import main
from tests.bus.conftest import (
    KEYS,
    Fleet,
    bezalel_app,
    dumps,
    message,
    rows,
    signed_headers,
    write_operator_secrets,
)
from tests.bus.test_api import call
from tests.waiting import wait_for


def test_the_same_signed_send_posted_again_queues_nothing_new(client: FlaskClient,
                                                              store: Path) -> None:
    body = dumps({"to": "ezra", "type": "alert", "payload": "once"})
    headers = signed_headers("bezalel", body, path="/outbox")
    answers = [client.post("/outbox", data=body, headers=headers) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [202, 200, 200]
    assert [answer.json["status"] for answer in answers] == ["queued", "duplicate", "duplicate"]
    assert len({answer.json["id"] for answer in answers}) == 1
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(1,)]


def test_a_sent_id_is_not_queued_again_after_delivery(client: FlaskClient, store: Path) -> None:
    fields = {"id": "once", "to": "ezra", "type": "alert", "payload": 1}
    assert call(client, "POST", "/outbox", body=fields).status_code == 202
    db = sqlite3.connect(store)
    with db:
        db.execute("DELETE FROM outbox")  # as after its delivery
    db.close()
    again = call(client, "POST", "/outbox", body=fields)
    assert (again.status_code, again.json) == (200, {"id": "once", "recipients": ["ezra"],
                                                     "status": "duplicate"})
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(0,)]


def test_client_chooses_an_id_and_reuses_it_on_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    client = BusClient("http://127.0.0.1:9", "ezra", KEYS["ezra"])
    seen: list[dict[str, Any]] = []

    def flaky(method: str, path: str, params: Any = None, body: Any = None) -> Any:
        seen.append(dict(body))
        if len(seen) < 3:
            raise GatewayError("lost the answer", retryable=True)
        return {"id": body["id"], "recipients": ["bezalel"], "status": "duplicate"}

    monkeypatch.setattr(client, "call", flaky)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    assert client.send("bezalel", "alert", 1)["status"] == "duplicate"
    assert len(seen) == 3
    assert seen[0]["id"] and all(fields["id"] == seen[0]["id"] for fields in seen)


def test_default_schedule_outlasts_a_receiver_down_for_a_day() -> None:
    settings = Settings()
    created = 0.0
    now, attempts, gaps = created, 0, []
    while now < 24 * 3600:
        attempts += 1
        assert not settings.gives_up(attempts, created, now), f"dead after {now / 3600:.1f} h"
        gap = settings.backoff(attempts)
        gaps.append(gap)
        now += gap
    assert max(gaps) <= 300  # capped: a receiver back after a day gets it within 5 minutes
    assert len(set(gaps[-20:])) > 1  # jittered
    assert settings.gives_up(attempts, created, 4 * 86400)


def test_receiver_enforces_the_ttl(client: FlaskClient, store: Path) -> None:
    """An expired message is answered ``expired`` (a final answer: the sender gives it up)
    and not stored, alone or in a batch."""
    sent = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    body = dumps(message(id="stale", timestamp=sent, ttl=60))
    response = client.post("/message", data=body, headers=signed_headers("ezra", body))
    assert (response.status_code, response.json) == (200, {"status": "expired", "id": "stale"})
    body = dumps({"messages": [message(id="stale", timestamp=sent, ttl=60),
                               message(id="fresh", ttl=60)]})
    batch = client.post("/messages/batch", data=body,
                        headers=signed_headers("ezra", body, path="/messages/batch"))
    assert batch.json == {"results": [{"id": "stale", "status": "expired"},
                                      {"id": "fresh", "status": "stored"}]}
    assert rows(store, "SELECT id FROM inbox") == [("fresh",)]


def test_dead_letters_are_kept_until_redriven(store: Path, client: FlaskClient) -> None:
    db = connect(store)
    outbox.enqueue(db, {"id": "d-1", "from": "bezalel", "type": "alert", "payload": 1},
                   ["ezra"])
    (row,) = outbox.claim(db, "1:w:0", 30, 1)
    outbox.finish(db, "1:w:0", [outbox.Outcome(row["seq"], dead_reason="refused")], {}, 0, 0)
    inbox_store.prune(db, before=time.time() + 365 * 86400)  # a year later
    assert rows(store, "SELECT id FROM dead_letters") == [("d-1",)]
    (letter,) = call(client, "GET", "/bus/dead-letters").json["dead_letters"]
    response = call(client, "POST", "/bus/dead-letters/redrive", body={"seqs": [letter["seq"]]})
    assert response.status_code == 200
    assert response.json["redriven"] == [{"id": "d-1", "to": "ezra"}]
    assert rows(store, "SELECT id, attempts FROM outbox") == [("d-1", 0)]
    assert rows(store, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    bad = call(client, "POST", "/bus/dead-letters/redrive", body={"seqs": "all"})
    assert bad.status_code == 400
    assert bad.json["problems"] == {"seqs": "'all' is not a list of at most 1000 dead-letter "
                                            "seqs (all when null or absent)"}
    db.close()


def dead_letter(store: Path, message_id: str) -> None:
    """A message of bezalel's to ezra, given up on as refused."""
    db = connect(store)
    try:
        outbox.enqueue(db, {"id": message_id, "from": "bezalel", "type": "alert", "payload": 1},
                       ["ezra"])
        (row,) = outbox.claim(db, "1:w:0", 30, 1)
        outbox.finish(db, "1:w:0", [outbox.Outcome(row["seq"], dead_reason="refused")], {}, 0,
                      0)
    finally:
        db.close()


def test_a_replayed_redrive_is_refused_and_moves_no_later_dead_letter(
        store: Path, client: FlaskClient) -> None:
    dead_letter(store, "d-1")
    body = dumps({"seqs": None})
    headers = signed_headers("bezalel", body, path="/bus/dead-letters/redrive")
    first = client.post("/bus/dead-letters/redrive", data=body, headers=headers)
    assert first.json["redriven"] == [{"id": "d-1", "to": "ezra"}]
    db = sqlite3.connect(store)
    with db:
        db.execute("DELETE FROM outbox")  # as after its delivery
    db.close()
    dead_letter(store, "d-2")
    replay = client.post("/bus/dead-letters/redrive", data=body, headers=headers)
    assert replay.status_code == 409, replay.json
    assert replay.json["error"].endswith("; a replayed request is refused")
    assert rows(store, "SELECT id FROM dead_letters") == [("d-2",)]
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(0,)]


@pytest.fixture
def quota_client(tmp_path: Path, registry_path: Path) -> FlaskClient:
    app = bezalel_app(registry_path, tmp_path / "q", BUS_INBOX_QUOTA=2)
    return app.test_client()


def post_as(client: FlaskClient, sender: str, message_id: str) -> Any:
    body = dumps(message(id=message_id, **{"from": sender}))
    return client.post("/message", data=body, headers=signed_headers(sender, body))


def test_inbox_quota_per_sender_answers_429(quota_client: FlaskClient) -> None:
    assert [post_as(quota_client, "ezra", f"q-{n}").status_code for n in range(2)] == [201, 201]
    refused = post_as(quota_client, "ezra", "q-2")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    assert refused.json == {
        "error": "'ezra' has 2 unacknowledged messages in bezalel's inbox (its quota); retry "
                 "later", "hint": "The receiving agent must acknowledge messages."}
    assert post_as(quota_client, "ezra", "q-1").status_code == 200  # a duplicate is fine
    assert post_as(quota_client, "allegro", "a-0").status_code == 201  # another sender is not
    body = dumps({"messages": [message(id="q-3")]})
    batch = quota_client.post("/messages/batch", data=body,
                              headers=signed_headers("ezra", body, path="/messages/batch"))
    assert batch.json == {"results": [{"id": "q-3", "status": "over_quota"}]}
    assert call(quota_client, "POST", "/messages/ack",
                body={"from": "ezra", "id": "q-0"}).status_code == 200
    assert post_as(quota_client, "ezra", "q-2").status_code == 201


def test_cli_send_id_and_redrive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fleet bus send --id`` twice queues once; a message given up while its receiver was
    down is delivered after ``fleet bus redrive``."""
    fleet = Fleet(tmp_path, {"FLEET_BUS_RETRY_BASE": "0.05", "FLEET_BUS_MAX_ATTEMPTS": "2",
                             "FLEET_BUS_POLL_SECONDS": "0.1"})
    monkeypatch.setenv("FLEET_SECRETS", str(write_operator_secrets(tmp_path)))
    try:
        (ezra,) = fleet.start("ezra")
        cli = ["--registry", str(fleet.registry), "bus"]
        sends = [CliRunner().invoke(main, [*cli, "send", "bezalel", "alert", "hi", "--from",
                                           "ezra", "--id", "cli-1"]) for _ in range(2)]
        assert [result.output for result in sends] == [
            "queued cli-1 in ezra's outbox for bezalel\n",
            "already queued cli-1 in ezra's outbox for bezalel\n"]
        with ezra.client() as client:
            wait_for(lambda: client.stats()["dead_letters"] == 1, timeout=20)
        fleet.start("bezalel")
        redriven = CliRunner().invoke(main, [*cli, "redrive", "ezra", "--all"])
        assert redriven.output == ("queued cli-1 -> bezalel again\n"
                                   "1 dead letter(s) of ezra queued again\n")
        with fleet["bezalel"].client() as runtime:
            got = wait_for(lambda: runtime.messages()["messages"], timeout=20)
        assert [(m["from"], m["id"]) for m in got] == [("ezra", "cli-1")]
    finally:
        fleet.stop()


def test_cli_tail_follow_prints_new_messages_across_a_restart(fleet: Fleet) -> None:
    ezra, bezalel = fleet.start("ezra", "bezalel")
    command = [sys.executable, "-c", "from fleet.cli import main; main()", "--registry",
               str(fleet.registry), "bus", "tail", "bezalel", "--follow", "--json"]
    env = {**os.environ, "FLEET_SECRETS": str(write_operator_secrets(fleet.folder))}
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as tail:
        reader = threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout or ()],
                                  daemon=True)
        reader.start()
        try:
            with ezra.client() as client:
                client.send("bezalel", "alert", 1, id="follow-1")
                assert json.loads(lines.get(timeout=20))["id"] == "follow-1"
                bezalel.kill()
                bezalel.start()
                client.send("bezalel", "alert", 2, id="follow-2")
                assert json.loads(lines.get(timeout=30))["id"] == "follow-2"
        finally:
            tail.kill()
