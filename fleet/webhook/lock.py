"""The receiver's locks: ``fcntl.flock`` on files in the state dir, shared by every process.

- ``deploy.lock`` (:class:`DeployLock`): only the holder claims queued runs and deploys, so two
  deploys never overlap. The deploy command inherits the locked file descriptor, so a deploy
  orphaned by a killed dispatcher keeps the lock until it ends and a restarted dispatcher
  cannot start a second deploy beside it. The deploy of the receiver's own node restarts the
  receiver only once this lock is free (``deploys/webhook.py``).
- ``dispatcher.lock`` (:class:`DispatcherLock`): held for its whole life by the one dispatcher
  process of the state dir; a second one finds it taken and exits.

The kernel drops a lock when its holders die.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class DeployLock:
    """An exclusive, blocking, cross-process lock; use as a context manager."""

    name = "deploy.lock"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.name
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it when ``blocking``); False if it is held elsewhere."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def held(self) -> bool:
        """True when some process holds the lock (checked by taking and dropping it at once,
        without writing the file)."""
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

    def release(self) -> None:
        """Drop the lock (children that inherited it keep it until they exit)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DeployLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class DispatcherLock(DeployLock):
    """Held by the state dir's one dispatcher process (take it with ``acquire(False)``)."""

    name = "dispatcher.lock"
