"""Long polls of the inbox: one watcher per process wakes every waiting request.

A long poll (``GET /messages?wait_ms=``) waits for a new inbox row. Each waiting request
used to ask SQLite every 3 ms whether the store changed: 200 of them were 66,000 queries a
second. Now one watcher thread per process (a greenlet under gunicorn's gevent workers)
asks, while anyone waits: it reads ``PRAGMA data_version`` (changes by any connection, of any
process) every :data:`CHECK_S` and, when it changed, the inbox's highest ``seq``; a new one
bumps a counter and wakes every waiter, which then runs its own query again. Waiters hold no
SQLite connection while they wait (the watcher's is the only one), and there are at most
``limit`` of them per process (``BUS_MAX_LONG_POLLS``): one more gets
:class:`TooManyLongPolls` (the inbox answers 429 with ``Retry-After``). The watcher ends,
closing its connection, when the last waiter leaves; a forked child starts its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bus.store import connect

CHECK_S = 0.003  # how often the watcher looks for a commit (one PRAGMA, no query)


class TooManyLongPolls(Exception):
    """This process already holds its limit of long polls."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this gateway process already holds {limit} long polls "
                         "(BUS_MAX_LONG_POLLS)")
        self.limit = limit


class InboxWatch:
    """Wakes the long polls of one process when a row is added to the store's inbox."""

    def __init__(self, store: Path, limit: int, check_s: float = CHECK_S) -> None:
        self.store, self.limit, self.check_s = store, limit, check_s
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._changed = threading.Condition()  # guards everything below
        self._waiters = 0
        self._running = False  # a watcher thread is running (or about to end, seeing waiters)
        self._count = 0  # inbox changes seen; waiters compare it with what they saw

    @property
    def waiting(self) -> int:
        """How many long polls of this process are waiting now."""
        return self._waiters if self._pid == os.getpid() else 0

    @contextlib.contextmanager
    def waiter(self) -> Iterator[Waiter]:
        """A place among the waiters (:class:`TooManyLongPolls` when all are taken)."""
        if self._pid != os.getpid():  # forked: the parent's watcher is not ours
            self._reset()
        with self._changed:
            if self._waiters >= self.limit:
                raise TooManyLongPolls(self.limit)
            self._waiters += 1
            if not self._running:
                self._start()
            seen = self._count
        try:
            yield Waiter(self, seen)
        finally:
            with self._changed:
                self._waiters -= 1

    def _start(self) -> None:
        """Start the watcher (lock held): its baseline is read before any waiter queries,
        so a row added after a waiter's query is always seen."""
        db = connect(self.store)
        try:
            baseline = _version(db), _highest(db)
        except BaseException:
            db.close()
            raise
        self._running = True
        threading.Thread(target=self._watch, args=(db, baseline), daemon=True,
                         name="bus-inbox-watch").start()

    def _watch(self, db: sqlite3.Connection, baseline: tuple[int, int]) -> None:
        """Check for commits while anyone waits; wake everyone on a new inbox row."""
        version, highest = baseline
        try:
            while True:
                time.sleep(self.check_s)
                with self._changed:
                    if self._waiters == 0:
                        self._running = False
                        return
                now = _version(db)
                if now == version:
                    continue
                version, newest = now, _highest(db)
                if newest != highest:
                    highest = newest
                    with self._changed:
                        self._count += 1
                        self._changed.notify_all()
        except BaseException:
            with self._changed:  # the next waiter starts another
                self._running = False
                self._changed.notify_all()
            raise
        finally:
            db.close()

    def next_change(self, seen: int, timeout: float) -> int:
        """The change count once it differs from ``seen``, or after ``timeout`` seconds
        (a watcher that failed is started again: its baseline is new, so the caller should
        look again either way)."""
        with self._changed:
            if not self._running:
                self._start()
                self._count += 1  # a new baseline: look again at whatever came before it
                return self._count
            if self._count == seen:
                self._changed.wait(timeout)
            return self._count


class Waiter:
    """One long poll's view of the watcher: :meth:`wait` for the next inbox row."""

    def __init__(self, watch: InboxWatch, seen: int) -> None:
        self.watch, self.seen = watch, seen

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a row added since the last look: True if one
        may have been, False if the time ran out."""
        count = self.watch.next_change(self.seen, timeout)
        changed, self.seen = count != self.seen, count
        return changed


def _version(db: sqlite3.Connection) -> int:
    """SQLite's ``data_version``: changes when another connection committed."""
    value: int = db.execute("PRAGMA data_version").fetchone()[0]
    return value


def _highest(db: sqlite3.Connection) -> int:
    """The inbox's highest ``seq`` (AUTOINCREMENT: a new row always raises it)."""
    value: int | None = db.execute("SELECT max(seq) FROM inbox").fetchone()[0]
    return value or 0
