"""Group commit: one writer thread per process commits the store's writes in batches.

Request threads and delivery threads hand a write (a function of the connection) to
:meth:`GroupWriter.run` and block until the transaction holding it is committed
(``synchronous=FULL``). Writes that arrive together share one transaction and one fsync,
and threads queue in the process instead of sleeping in SQLite's busy handler. The writers
of several gunicorn workers take turns through an ``flock`` on ``bus.sqlite3.lock``, which
hands over at once (SQLite's own busy wait sleeps up to 100 ms). Each write runs in its own
SAVEPOINT, so one failing write does not undo the others.
"""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from bus.db import connect

T = TypeVar("T")
MAX_BATCH = 512


class GroupWriter:
    """Serialises and batches writes to one store; started lazily in each process."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]]
        self._queue = queue.SimpleQueue()
        self._pid = 0
        self._lock = threading.Lock()

    def run(self, write: Callable[[sqlite3.Connection], T], timeout: float = 60) -> T:
        """Run ``write(db)`` in a committed transaction; its result, or its exception."""
        self._ensure_thread()
        future: Future[T] = Future()
        self._queue.put((write, future))
        return future.result(timeout)

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._loop, daemon=True, name="bus-writer").start()
                self._pid = os.getpid()

    def _loop(self) -> None:
        db = connect(self.store)
        lock = os.open(f"{self.store}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._commit(db, batch)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _commit(self, db: sqlite3.Connection,
                batch: list[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for write, future in batch:
                db.execute("SAVEPOINT one")
                try:
                    outcomes.append((future, write(db), None))
                    db.execute("RELEASE one")
                except Exception as exc:  # handed to the waiting thread
                    db.execute("ROLLBACK TO one")
                    db.execute("RELEASE one")
                    outcomes.append((future, None, exc))
            db.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: nothing was stored
            if db.in_transaction:
                db.execute("ROLLBACK")
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
