"""Every store we keep opens its database the one way (:func:`bus.sqlite.open_db`): commits on
disk once they returned (``synchronous=FULL``), a 30 s wait for locks, rows by name."""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus import store
from bus.sqlite import open_db
from fleet.node.tools import records
from fleet.node.work import items
from fleet.webhook import db as webhook_db


def bus_store(folder: Path) -> sqlite3.Connection:
    path = folder / "bus.sqlite3"
    store.init_db(path)
    return store.connect(path)


@pytest.mark.parametrize("opened", [
    bus_store,
    lambda folder: records.connect(folder),
    lambda folder: webhook_db.connect(folder / "webhook.sqlite3"),
], ids=["bus", "tool-calls", "webhook"])
def test_every_store_opens_its_database_the_one_way(
        tmp_path: Path, opened: Callable[[Path], sqlite3.Connection]) -> None:
    db = opened(tmp_path)
    try:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.isolation_level is None and db.row_factory is sqlite3.Row
    finally:
        db.close()


def _work_store(folder: Path) -> None:
    with items.connect(folder):
        pass


OPENERS: dict[str, Callable[[Path], sqlite3.Connection | None]] = {
    "bus": lambda folder: store.init_db(folder / "bus.sqlite3"),
    "tool-calls": lambda folder: records.connect(folder),
    "webhook": lambda folder: webhook_db.connect(folder / "webhook.sqlite3"),
    "work-items": lambda folder: _work_store(folder),
}
ROUNDS = 30


def _open_fresh_stores(kind: str, root: str, barrier: Any, failures: Any) -> None:
    """Open the store ``kind`` in ``ROUNDS`` fresh folders, in step with the other
    processes (one barrier a round); count what raised."""
    for number in range(ROUNDS):
        folder = Path(root) / str(number)
        folder.mkdir(exist_ok=True)
        barrier.wait()
        try:
            db = OPENERS[kind](folder)
            if db is not None:
                db.close()
        except Exception as exc:  # what the test counts
            with failures.get_lock():
                failures.value += 1
            print(f"{kind} round {number}: {exc!r}", file=sys.stderr)


@pytest.mark.parametrize("kind", sorted(OPENERS))
def test_processes_opening_a_fresh_store_at_once_all_get_it(tmp_path: Path, kind: str) -> None:
    """Stop 35's CI failure: of four processes creating the work store at once, one got
    ``database is locked`` from ``PRAGMA journal_mode = WAL`` (SQLite refuses the second of two
    readers asking for the exclusive lock without waiting). Every store now switches through
    :func:`bus.sqlite.use_wal`."""
    context = multiprocessing.get_context("spawn")
    processes = 6
    barrier, failures = context.Barrier(processes), context.Value("i", 0)
    workers = [context.Process(target=_open_fresh_stores,
                               args=(kind, str(tmp_path), barrier, failures))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0] * processes
    assert failures.value == 0
    for number in range(ROUNDS):
        db = open_db(next((tmp_path / str(number)).glob("*.sqlite3")))
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()
