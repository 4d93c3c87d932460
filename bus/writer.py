"""Group commit: the store's writes are committed in batches, one transaction and one fsync each.

Request threads and delivery threads hand a write (a function of the connection) to
:meth:`GroupWriter.run` and return once the transaction holding it is committed
(``synchronous=FULL``). Writes that arrive while a commit is running wait together and go
into the next transaction. There is no writer thread: the first waiting caller leads, i.e.
commits the queued batch on the process's one write connection and wakes the others; then it
hands the lead to the next waiting caller. That saves a thread hand-off (and a wait for the
GIL) per batch. The writers of several gunicorn workers take turns through a
:class:`bus.locks.FileLock` on ``bus.sqlite3.lock``, which hands over at once (SQLite's own
busy wait sleeps up to 100 ms). One failing write does not undo the others: the batch is
then run again with each write in its own SAVEPOINT. The write connection and lock file are
closed by :meth:`GroupWriter.close`, else when the writer is collected or the interpreter
exits (never left to the garbage collector, which Python 3.13 warns about). A forked child
leaves its parent's connection alone (SQLite forbids using it across a fork, closing
included) and opens its own.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bus.locks import FileLock
from bus.store import connect, lock_path

T = TypeVar("T")
MAX_BATCH = 512
_INHERITED: list[sqlite3.Connection] = []  # a parent's, kept unclosed in a forked child


class _Write:
    """One queued write and its outcome; ``done`` is held until it is decided."""

    __slots__ = ("change", "done", "error", "lead", "result")

    def __init__(self, change: Callable[[sqlite3.Connection], Any]) -> None:
        self.change = change
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False  # woken to commit the next batch, not with an outcome
        self.result: Any = None
        self.error: BaseException | None = None


class GroupWriter:
    """Serialises and batches writes to one store (state reset in a forked child)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._pid = 0
        self._reset()

    def _reset(self) -> None:
        self._mutex = threading.Lock()  # guards _pending and _leading
        self._pending: list[_Write] = []
        self._leading = False
        self._db: sqlite3.Connection | None = None
        self._lock = FileLock(lock_path(self.store))
        self._closer: weakref.finalize[[sqlite3.Connection, FileLock, int], GroupWriter] | None
        self._closer = None
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the write connection and the lock file once no write is in flight (the
        next write opens them again)."""
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._closer is not None:
            self._closer()  # once: it detaches itself
        self._db, self._closer = None, None  # the closer closed the lock file too

    def run(self, change: Callable[[sqlite3.Connection], T], timeout: float = 60) -> T:
        """Run ``change(db)`` in a committed transaction; its result, or its exception."""
        if self._pid != os.getpid():  # forked: the parent's connection is not ours
            self._close()
            self._reset()
        item = _Write(change)
        with self._mutex:
            self._pending.append(item)
            lead = not self._leading
            self._leading = True
        while True:
            if lead:
                self._lead()
            if not item.done.acquire(timeout=timeout):
                with self._mutex:  # still queued: withdraw it; else it is being decided
                    if not item.lead and item in self._pending:
                        self._pending.remove(item)
                        raise TimeoutError(f"bus store write not committed within {timeout} s")
                continue
            if not item.lead:
                break
            item.lead, lead = False, True
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def _lead(self) -> None:
        """Commit the queued writes (ours among them), then pass the lead on or drop it."""
        with self._mutex:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        try:
            _blocking(self._commit, batch)
        finally:
            with self._mutex:
                if self._pending:
                    self._pending[0].lead = True
                    self._pending[0].done.release()
                else:
                    self._leading = False
            for item in batch:
                item.done.release()

    def _commit(self, batch: list[_Write]) -> None:
        """Run ``batch`` in one transaction, under the cross-process lock.

        The writes run straight in the transaction; only when one of them raises is the
        transaction rolled back and run again with each write in its own SAVEPOINT (fewer
        statements, hence fewer GIL releases, in the common case).
        """
        try:
            db = self._connection()
            self._lock.acquire()
            try:
                self._transaction(db, batch)
            finally:
                self._lock.unlock()
        except BaseException as exc:  # nothing was stored: every waiting caller gets the error
            for item in batch:
                item.result, item.error = None, exc

    def _connection(self) -> sqlite3.Connection:
        """This process's write connection and lock file, opened on first use."""
        if self._db is None:
            self._lock.open()
            try:
                db = connect(self.store)
            except BaseException:
                self._lock.close()
                raise
            self._db = db
            self._closer = weakref.finalize(self, _close_handles, db, self._lock, os.getpid())
        return self._db

    def _transaction(self, db: sqlite3.Connection, batch: list[_Write]) -> None:
        """``batch`` in one committed transaction (rolled back if the commit fails)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                for item in batch:
                    item.result = item.change(db)
            except Exception:  # one write failed: isolate each write, the others still commit
                if db.in_transaction:
                    db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                for item in batch:
                    self._isolated(db, item)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _isolated(db: sqlite3.Connection, item: _Write) -> None:
        """Run one write in a SAVEPOINT: its changes kept, or undone with its error noted."""
        db.execute("SAVEPOINT one")
        try:
            item.result = item.change(db)
            db.execute("RELEASE one")
        except Exception as exc:  # handed to the waiting thread
            db.execute("ROLLBACK TO one")
            db.execute("RELEASE one")
            item.result, item.error = None, exc


def _blocking(commit: Callable[[list[_Write]], None], batch: list[_Write]) -> None:
    """Run ``commit(batch)`` (the ``flock`` wait, the fsync) so that it blocks only its caller.

    In a process gevent has patched (gunicorn's gevent workers) a commit run here would stall
    every connection of the worker for its fsync, and no request could queue its write for
    the next batch meanwhile: it runs in gevent's pool of real threads instead, while the
    leader's greenlet waits. Elsewhere (threads) it runs here.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        gevent.get_hub().threadpool.apply(commit, (batch,))
    else:
        commit(batch)


def _close_handles(db: sqlite3.Connection, lock: FileLock, opener: int) -> None:
    """Close a writer's connection and lock file (its finalizer: no reference to the writer);
    in a child forked since, only the lock file."""
    try:
        if os.getpid() == opener:
            db.close()
        else:
            _INHERITED.append(db)  # neither used nor closed (nor left to the collector) here
    finally:
        lock.close()
