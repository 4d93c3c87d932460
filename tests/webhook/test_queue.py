"""Coalescing and crash recovery of the deploy queue (real SQLite)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.webhook.db import SCHEMA_VERSION, connect
from fleet.webhook.push import Push
from fleet.webhook.queue import claim_next, enqueue, mark_interrupted, queue_depth
from fleet.webhook.records import get_run


def push(number: int) -> Push:
    """A push of PROD to a sha made from ``number``."""
    return Push(forge="gitea", delivery_id=f"d-{number}", event="push", ref="refs/tags/PROD",
                before="0" * 40, sha=f"{number:040x}", pusher="alice", repository="ops/fleet")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh receiver database."""
    connection = connect(tmp_path / "webhook.sqlite3")
    yield connection
    connection.close()


def test_queued_pushes_coalesce_into_one_run_of_the_newest(conn: sqlite3.Connection) -> None:
    ids = [enqueue(conn, push(number)) for number in range(1, 6)]
    claim = claim_next(conn)
    assert claim is not None
    assert (claim.run_id, claim.sha, claim.superseded) == (ids[-1], f"{5:040x}", (4, 3, 2, 1))
    for run_id in ids[:-1]:
        run = get_run(conn, run_id, with_log=False)
        assert (run["status"], run["superseded_by"]) == ("superseded", ids[-1])
        assert run["summary"] == (f"covered by run {ids[-1]}, which deploys what tag PROD "
                                  "points to when it starts")
    assert get_run(conn, ids[-1], with_log=False)["covers"] == ids[:-1]
    assert get_run(conn, ids[-1], with_log=False)["status"] == "running"
    assert claim_next(conn) is None


def test_a_push_during_a_deploy_waits_for_the_next_claim(conn: sqlite3.Connection) -> None:
    first = enqueue(conn, push(1))
    assert claim_next(conn).run_id == first  # type: ignore[union-attr]
    second, third = enqueue(conn, push(2)), enqueue(conn, push(3))
    assert queue_depth(conn) == 2
    claim = claim_next(conn)
    assert claim is not None and (claim.run_id, claim.superseded) == (third, (second,))
    assert get_run(conn, first, with_log=False)["status"] == "running"


def test_runs_left_running_are_marked_interrupted(conn: sqlite3.Connection) -> None:
    crashed = enqueue(conn, push(1))
    claim_next(conn)
    waiting = enqueue(conn, push(2))
    assert mark_interrupted(conn) == [crashed]
    run = get_run(conn, crashed, with_log=False)
    assert run["status"] == "interrupted"
    assert run["summary"] == ("the receiver stopped during this run (crash or kill); "
                              "its outcome is unknown")
    assert run["ended_at"] is not None
    claim = claim_next(conn)
    assert claim is not None and claim.run_id == waiting


def test_claims_from_two_connections_never_take_the_same_run(tmp_path: Path) -> None:
    one, two = connect(tmp_path / "db.sqlite3"), connect(tmp_path / "db.sqlite3")
    try:
        enqueue(one, push(1))
        claims = [claim_next(one), claim_next(two)]
        assert [claim.run_id if claim else None for claim in claims] == [1, None]
    finally:
        one.close()
        two.close()


V1_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, delivery_id TEXT NOT NULL, forge TEXT NOT NULL,
    tag TEXT NOT NULL, sha TEXT NOT NULL, before_sha TEXT NOT NULL DEFAULT '',
    pusher TEXT NOT NULL, repository TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'success', 'failed',
        'unhealthy', 'superseded', 'interrupted')),
    superseded_by INTEGER REFERENCES runs (id), queued_at TEXT NOT NULL, started_at TEXT,
    ended_at TEXT, exit_status INTEGER, worker_pid INTEGER, commit_sha TEXT, log_path TEXT,
    summary TEXT NOT NULL DEFAULT '', hosts TEXT NOT NULL DEFAULT '{}',
    health TEXT NOT NULL DEFAULT '[]');
CREATE INDEX runs_by_status ON runs (status, id);
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY, forge TEXT NOT NULL, event TEXT NOT NULL,
    received_at TEXT NOT NULL, outcome TEXT NOT NULL CHECK (outcome IN ('queued', 'ignored')),
    reason TEXT NOT NULL DEFAULT '', run_id INTEGER REFERENCES runs (id));
INSERT INTO runs (delivery_id, forge, tag, sha, pusher, status, queued_at, commit_sha)
    VALUES ('d-1', 'gitea', 'PROD', 'aa', 'alice', 'success', '2026-11-29T00:00:00.000Z', 'aa');
INSERT INTO deliveries VALUES ('d-1', 'gitea', 'push', '2026-11-29T00:00:00.000Z', 'queued',
    '', 1);
"""


def test_a_version_1_database_is_rebuilt_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "webhook.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    old.close()
    conn = connect(path)
    try:
        run = get_run(conn, 1, with_log=False)
        assert (run["status"], run["sha"], run["commit_sha"], run["stages"]) == (
            "ok", "aa", "aa", [])
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'runs_by_status'"
                            ).fetchone() is not None
        second = enqueue(conn, push(2))
        assert second == 2 and claim_next(conn).run_id == 2  # type: ignore[union-attr]
    finally:
        conn.close()
    connect(path).close()  # opening a current database again changes nothing


def test_only_queued_runs_of_the_claimed_tag_are_covered(conn: sqlite3.Connection) -> None:
    staging = enqueue(conn, Push(forge="gitea", delivery_id="s-1", event="push",
                                 ref="refs/tags/STAGING", before="0" * 40, sha="e" * 40,
                                 pusher="bob", repository="ops/fleet"))
    prod = [enqueue(conn, push(number)) for number in (1, 2)]
    claim = claim_next(conn)
    assert claim is not None and (claim.run_id, claim.superseded) == (prod[-1], (prod[0],))
    assert get_run(conn, staging, with_log=False)["status"] == "queued"


def test_a_version_2_database_gets_the_drift_checks_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "webhook.sqlite3"
    conn = connect(path)
    conn.execute("DROP TABLE drift_checks")
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO runs (delivery_id, forge, tag, sha, pusher, status, queued_at, "
                 "release) VALUES ('d', 'gitea', 'PROD', 'a', 'me', 'ok', 'now', 'abc')")
    conn.close()
    with contextlib.closing(connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [tuple(row) for row in conn.execute("SELECT status, release FROM runs")] == [
            ("ok", "abc")]
        assert conn.execute("SELECT COUNT(*) FROM drift_checks").fetchone()[0] == 0
