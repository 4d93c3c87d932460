"""Safe start-up (issue 9): however many gateway workers open a fresh store at once, exactly
one creates the schema (under the store's lock) and none fails with "database is locked"."""

from __future__ import annotations

import os
import sqlite3
import traceback
from pathlib import Path

import pytest

from bus import outbox, store
from bus.writer import GroupWriter
from tests.bus.conftest import rows

WORKERS = 8
TRIES = 200


def boot(path: Path) -> None:
    """What a gateway worker does with its store as it starts."""
    store.init_db(path)
    db = store.connect(path)
    try:
        outbox.release_dead_leases(db)
    finally:
        db.close()
    GroupWriter(path).run(lambda db: store.bump(db, "booted"))


def start_at_once(path: Path, count: int) -> list[int]:
    """Fork ``count`` processes that boot on ``path`` when released together; exit codes."""
    gate_read, gate_write = os.pipe()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # child: wait for the gate, boot, report by exit code
            code = 1
            try:
                os.close(gate_write)
                os.read(gate_read, 1)
                boot(path)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        children.append(pid)
    os.close(gate_read)
    os.close(gate_write)  # EOF releases every child at once
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]


@pytest.mark.slow
def test_many_workers_on_a_fresh_store_at_once(tmp_path: Path) -> None:
    failures = []
    for attempt in range(TRIES):
        path = tmp_path / f"try-{attempt}" / store.STORE_NAME
        path.parent.mkdir()
        codes = start_at_once(path, WORKERS)
        if any(codes):
            failures.append((attempt, codes))
            continue
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT value FROM counters WHERE name = 'booted'").fetchone() == (
                WORKERS,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("PRAGMA user_version").fetchone() == (store.SCHEMA_VERSION,)
        finally:
            db.close()
    assert failures == [], f"{len(failures)} of {TRIES} start-ups failed: {failures[:5]}"


def test_an_old_store_is_migrated_with_its_unacked_counts(tmp_path: Path) -> None:
    path = tmp_path / store.STORE_NAME
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
            sender TEXT NOT NULL, recipient TEXT NOT NULL, type TEXT NOT NULL,
            payload TEXT NOT NULL, timestamp TEXT NOT NULL, correlation_id TEXT, reply_to TEXT,
            ttl INTEGER, format TEXT NOT NULL, received_at REAL NOT NULL, acked_at REAL,
            UNIQUE (sender, id));
        INSERT INTO inbox (id, sender, recipient, type, payload, timestamp, format, received_at,
            acked_at) VALUES ('a', 'ezra', 'b', 'alert', '1', 't', 'fleet', 0, NULL),
                             ('b', 'ezra', 'b', 'alert', '1', 't', 'fleet', 0, 1);
    """)
    db.close()
    store.init_db(path)
    assert rows(path, "SELECT sender, unacked FROM senders") == [("ezra", 1)]
