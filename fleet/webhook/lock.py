"""The deploy lock: ``fcntl.flock`` on ``<state dir>/deploy.lock``, shared by every process.

Only the holder claims queued runs and deploys, so two deploys never overlap, whichever
gunicorn worker received the pushes. The kernel drops the lock when its holders die. The deploy
command inherits the locked file descriptor, so a deploy orphaned by a killed receiver keeps
the lock until it ends and a restarted receiver cannot start a second deploy beside it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class DeployLock:
    """An exclusive, blocking, cross-process lock; use as a context manager."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "deploy.lock"
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
