"""Scheduled drift checks without a fleet: when one is due, when it alerts, self-heal, and
the read API over the recorded checks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from bus.timestamps import utc_timestamp
from fleet.webhook import driftcheck
from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from fleet.webhook.dispatcher import check_drift_if_due
from fleet.webhook.driftcheck import alert_kind, due, queue_heal
from fleet.webhook.lock import DeployLock
from tests.waiting import wait_for
from tests.webhook.conftest import auth
from tests.webhook.forge import signed_push


@pytest.fixture
def conn(settings: Settings) -> Iterator[sqlite3.Connection]:
    """The receiver's database, closed after the test."""
    with contextlib.closing(connect(settings.db_path)) as connection:
        yield connection


@pytest.mark.parametrize(("before", "after", "kind"), [
    (None, [], ""),
    (None, ["a"], "appeared"),
    ([], ["a"], "appeared"),
    (["a"], ["a", "b"], "appeared"),
    (["a"], ["a"], ""),
    (["a", "b"], ["a"], ""),
    (["a"], [], "cleared"),
    ([], [], ""),
])
def test_an_alert_goes_out_when_drift_appears_or_clears(
        before: list[str] | None, after: list[str], kind: str) -> None:
    assert alert_kind(before, after) == kind


def test_a_check_is_due_an_interval_after_the_last_or_the_start(settings: Settings,
                                                                conn: sqlite3.Connection) -> None:
    every = dataclasses.replace(settings, drift_interval=60.0)
    started = time.time()
    assert not due(conn, every, started + 30, since=started)
    assert due(conn, every, started + 61, since=started)
    conn.execute("INSERT INTO drift_checks (started_at, status) VALUES (?, 'ok')",
                 (utc_timestamp(),))
    assert not due(conn, every, time.time() + 30, since=started - 1000)
    assert due(conn, every, time.time() + 61, since=started - 1000)
    off = dataclasses.replace(settings, drift_interval=0.0)
    assert not due(conn, off, time.time() + 10**6, since=started)


def test_self_heal_queues_a_deploy_of_the_tag(settings: Settings,
                                              conn: sqlite3.Connection) -> None:
    run_id = queue_heal(conn, settings, 7, "ab" * 20)
    row = conn.execute("SELECT forge, tag, sha, status, pusher FROM runs WHERE id = ?",
                       (run_id,)).fetchone()
    assert tuple(row) == ("drift", settings.deploy_tag, "ab" * 20, "queued", "drift check")


def test_the_read_api_lists_checks_newest_first(conn: sqlite3.Connection,
                                                client: FlaskClient) -> None:
    for status, drifted in (("ok", []), ("drift", ["bezalel"])):
        conn.execute("INSERT INTO drift_checks (started_at, status, drifted) VALUES (?, ?, ?)",
                     (utc_timestamp(), status, json.dumps(drifted)))
    assert client.get("/drift-checks").status_code == 401
    checks = client.get("/drift-checks", headers=auth()).get_json()["checks"]
    assert [(check["status"], check["drifted"]) for check in checks] == [
        ("drift", ["bezalel"]), ("ok", [])]
    assert len(client.get("/drift-checks?limit=1", headers=auth()).get_json()["checks"]) == 1
    bad = client.get("/drift-checks?limit=%C2%B2", headers=auth())
    assert (bad.status_code, bad.get_json()["error"]) == (
        400, "limit '²' is not a number from 1 to 500")


def test_a_drift_check_runs_only_under_the_deploy_lock_and_after_queued_deploys(
        settings: Settings, conn: sqlite3.Connection, client: FlaskClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Never during a deploy: the check holds the deploy lock every deploy takes, and a
    queued deploy goes first."""
    held: list[bool] = []

    def check(conn_: sqlite3.Connection, settings_: Settings, alert: object) -> None:
        held.append(DeployLock(settings.state_dir).held())  # by the check, so no deploy runs

    monkeypatch.setattr(driftcheck, "run_check", check)
    every = dataclasses.replace(settings, drift_interval=1.0)
    long_ago = time.time() - 100
    body, headers = signed_push("gitea", f"refs/tags/{settings.deploy_tag}", "ab" * 20)
    queued = client.post("/hooks/gitea", data=body, headers=headers)
    assert queued.status_code == 202
    check_drift_if_due(every, long_ago)
    assert held == []  # a deploy is queued: it goes first
    conn.execute("UPDATE runs SET status = 'ok'")
    check_drift_if_due(every, long_ago)
    assert held == [True]
    with DeployLock(settings.state_dir):  # a deploy running in another process...
        waiting = threading.Thread(target=check_drift_if_due, args=(every, long_ago))
        waiting.start()
        wait_for(lambda: lock_waiters(settings) > 0, timeout=10, what="the check waits")
        assert held == [True]
    waiting.join(10)
    assert held == [True, True]  # ...and the check ran once it ended


def lock_waiters(settings: Settings) -> int:
    """How many processes or threads wait for the deploy lock (``/proc/locks``: ``->``)."""
    inode = os.stat(DeployLock(settings.state_dir).path).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and line.split()[-3].endswith(f":{inode}"))
