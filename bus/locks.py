"""Locks between processes of one machine: an exclusive ``flock`` on a lock file (one place).

Every cross-process lock of the bus, the webhook receiver, the run records and the lab is a
:class:`FileLock`: the bus's schema set-up and group commits (``bus.sqlite3.lock``), the
receiver's ``deploy.lock`` and ``dispatcher.lock``, a run record's ``<run-id>.lock``, the
lab's operation, cache and claim locks. The kernel drops a lock when its holders die, so a
lock never goes stale.

The lock file is opened close-on-exec: a child process gets the descriptor (and so holds the
lock with its parent: ``flock`` locks belong to the open file, shared by every copy of the
descriptor) only when it is handed over on purpose (``subprocess.Popen(pass_fds=...)``, as
the receiver does with the deploy command). :meth:`FileLock.unlock` drops the lock for every
copy; closing the descriptor keeps it for the copies still open.

Standard library only: the bus imports nothing from ``fleet``, so the fleet uses it from here.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self


class FileLock:
    """An exclusive lock on ``path`` (the file created, with its directory, if missing);
    blocking as a context manager, non-blocking with ``acquire(blocking=False)``.

    ``write_pid``: the holder writes its pid into the file (for people looking at it; the
    lock itself is the ``flock``). ``mode``: the lock file's mode when it is created.
    """

    def __init__(self, path: str | Path, *, mode: int = 0o600, write_pid: bool = False) -> None:
        self.path = Path(path)
        self.mode = mode
        self.write_pid = write_pid
        self.fd: int | None = None

    def open(self) -> int:
        """The lock file's descriptor, opened (close-on-exec) on first use; no lock taken."""
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        return self.fd

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock, waiting for it when ``blocking``; False (the file closed again) when
        another open file holds it and ``blocking`` is False."""
        fd = self.open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self.close()
            return False
        if self.write_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def unlock(self) -> None:
        """Drop the lock (for every copy of the descriptor), keeping the file open for the next
        :meth:`acquire`."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (a lock still held stays with the copies of the descriptor that
        children got; with none, it is dropped)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def release(self) -> None:
        """Drop the lock (children that got the descriptor lose it too) and close the file."""
        try:
            self.unlock()
        finally:
            self.close()

    def held(self) -> bool:
        """True when some open file holds the lock, this process's own included (probed by
        taking and dropping it at once on a new descriptor; the file is neither created nor
        written)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
