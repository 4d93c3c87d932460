"""Claims: a long-lived user (a pytest session) holds a lab so others leave it alone.

A claim is an ``flock`` on ``<lab dir>/in-use.lock``: it ends with the process, even when the
process is killed, so a claim can never go stale. ``fleet lab down --all`` skips claimed labs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.lab.locks import is_locked, release, try_lock
from fleet.lab.paths import lab_dir

CLAIM_LOCK = "in-use.lock"


@dataclass
class LabClaim:
    """A lab held for a long-lived user (e.g. a pytest session) until :meth:`release`."""

    lab: str
    fd: int | None

    def release(self) -> None:
        """Let others (``down --all``, other sessions) have the lab again."""
        if self.fd is not None:
            release(self.fd)
            self.fd = None


def claim(lab: str) -> LabClaim | None:
    """Claim ``lab`` for this process, or None when another holder has it.

    The claim is an ``flock``, so it ends with the process even if it is killed.
    """
    fd = try_lock(lab_dir(lab) / CLAIM_LOCK)
    return None if fd is None else LabClaim(lab, fd)


def in_use(lab: str) -> bool:
    """Whether some process holds a :func:`claim` on ``lab``."""
    return is_locked(lab_dir(lab) / CLAIM_LOCK)
