"""Scheduled drift checks without a fleet: when one is due, when it alerts, self-heal, and
the read API over the recorded checks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from fleet.webhook.config import Settings
from fleet.webhook.db import connect, now
from fleet.webhook.driftcheck import alert_kind, due, queue_heal
from tests.webhook.conftest import auth


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
    conn.execute("INSERT INTO drift_checks (started_at, status) VALUES (?, 'ok')", (now(),))
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
                     (now(), status, json.dumps(drifted)))
    assert client.get("/drift-checks").status_code == 401
    checks = client.get("/drift-checks", headers=auth()).get_json()["checks"]
    assert [(check["status"], check["drifted"]) for check in checks] == [
        ("drift", ["bezalel"]), ("ok", [])]
    assert len(client.get("/drift-checks?limit=1", headers=auth()).get_json()["checks"]) == 1
    bad = client.get("/drift-checks?limit=%C2%B2", headers=auth())
    assert (bad.status_code, bad.get_json()["error"]) == (
        400, "limit '²' is not a number from 1 to 500")
