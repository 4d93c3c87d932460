"""Coalescing and crash recovery of the deploy queue (real SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.webhook.db import connect
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
        assert run["summary"] == f"covered by run {ids[-1]} (newer push)"
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
