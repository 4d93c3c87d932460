"""The receiver's locks: :class:`bus.locks.FileLock` on files in the state dir, shared by every
process, each holding its holder's pid.

- ``deploy.lock`` (:class:`DeployLock`): only the holder claims queued runs and deploys, so two
  deploys never overlap. The deploy command inherits the locked file descriptor
  (``pass_fds``), so a deploy orphaned by a killed dispatcher keeps the lock until it ends and
  a restarted dispatcher cannot start a second deploy beside it. The deploy of the receiver's
  own node restarts the receiver only once this lock is free (``deploys/webhook.py``).
- ``dispatcher.lock`` (:class:`DispatcherLock`): held for its whole life by the one dispatcher
  process of the state dir; a second one finds it taken and exits.

The kernel drops a lock when its holders die.
"""

from __future__ import annotations

from pathlib import Path

from bus.locks import FileLock


class DeployLock(FileLock):
    """An exclusive, blocking, cross-process lock; use as a context manager. ``release()``
    drops it for a deploy command that inherited it too."""

    name = "deploy.lock"

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir / self.name, mode=0o600, write_pid=True)


class DispatcherLock(DeployLock):
    """Held by the state dir's one dispatcher process (take it with ``acquire(False)``)."""

    name = "dispatcher.lock"
