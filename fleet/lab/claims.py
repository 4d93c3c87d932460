"""Claims: a long-lived user (a pytest session) holds a lab so others leave it alone.

A claim is a :class:`bus.locks.FileLock` on ``<lab dir>/in-use.lock``: it ends with the
process, even when the process is killed, so a claim can never go stale. ``fleet lab down
--all`` skips claimed labs.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.locks import FileLock
from fleet.lab.paths import lab_dir, lab_lock

CLAIM_LOCK = "in-use.lock"


def claim_lock(lab: str) -> FileLock:
    """The lock file of claims on ``lab``."""
    return lab_lock(lab_dir(lab) / CLAIM_LOCK)


@dataclass
class LabClaim:
    """A lab held for a long-lived user (e.g. a pytest session) until :meth:`release`."""

    lab: str
    lock: FileLock

    def release(self) -> None:
        """Let others (``down --all``, other sessions) have the lab again."""
        self.lock.release()


def claim(lab: str) -> LabClaim | None:
    """Claim ``lab`` for this process, or None when another holder has it.

    The claim is an ``flock``, so it ends with the process even if it is killed.
    """
    lock = claim_lock(lab)
    return LabClaim(lab, lock) if lock.acquire(blocking=False) else None


def in_use(lab: str) -> bool:
    """Whether some process holds a :func:`claim` on ``lab``."""
    return claim_lock(lab).held()
