"""SQLite for every store we keep (the bus, the tool call record, the webhook receiver's runs,
conversation memory, work items): the one way to open a database, the one write transaction,
and the one way to open a store that creates its schema on first use."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def open_db(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: :func:`immediate`), rows
    as :class:`sqlite3.Row`, waiting up to 30 s for a lock, ``synchronous=FULL`` (a commit is
    on disk once it returned), usable from any thread. Closed again when a pragma fails (a
    locked or corrupt file): no connection is left behind."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA synchronous = FULL")
    except BaseException:
        db.close()
        raise
    return db


WAL_WAIT_S = 30.0


def use_wal(db: sqlite3.Connection) -> None:
    """Put the database in WAL mode (persistent in the file), however many processes open a
    fresh file at once. Switching takes the exclusive lock, and SQLite answers ``database is
    locked`` at once, without its busy wait, to the second of two connections that both read
    the file and then asked for it (its deadlock rule): that one tries again, for up to
    :data:`WAL_WAIT_S`, and finds the file already in WAL mode."""
    deadline = time.monotonic() + WAL_WAIT_S
    pause = 0.005
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) != sqlite3.SQLITE_BUSY \
                    or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * (1 + random.random()))
        pause = min(pause * 2, 0.2)


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` write transaction: committed on success, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def store(path: str | Path, schema: Iterable[str], table: str) -> Iterator[sqlite3.Connection]:
    """The store at ``path`` in WAL mode, its ``schema`` created first when ``table`` (one of
    its tables) is missing, all in one write transaction (two processes may create it at
    once); closed again on leaving."""
    db = open_db(path)
    try:
        use_wal(db)
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() is None:
            with immediate(db):
                for statement in schema:
                    db.execute(statement)
        yield db
    finally:
        db.close()
