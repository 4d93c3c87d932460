"""Is a process still the one we mean? Liveness by pid *and* start time (Linux ``/proc``).

A pid alone is reused: once a process is gone, a new one may get its number, and
``os.kill(pid, 0)`` then says "alive" for a stranger. A process's start time (field 22 of
``/proc/PID/stat``, clock ticks since boot) never changes and two processes with the same pid
never share it, so ``PID.STARTTIME`` (:func:`process_tag`) names one process for good. A zombie
counts as gone.

The one liveness check of the controller and the receiver (the deploy lock's holder, the
webhook dispatcher's parent, lab processes). Standard library only, so node-side code may use
it too; ``bus`` keeps its own copy (``bus.outbox.process_tag``), as it imports nothing from
``fleet``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first); None when there
    is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot); None when it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def started_unix(pid: int) -> float | None:
    """When process ``pid`` started, as Unix time (its start ticks after boot, placed with
    ``CLOCK_BOOTTIME``, which needs no ``/proc/stat``); None when it is gone or hidden."""
    ticks = start_time(pid)
    if ticks is None:
        return None
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, given ``started``, is the process that started
    then (not a later one that got the same pid)."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None or not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or (len(fields) > 19 and int(fields[19]) == started)


def process_tag(pid: int | None = None) -> str:
    """``PID.STARTTIME`` of process ``pid`` (this one by default): a name never reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{start_time(pid) or 0}"


@dataclass(frozen=True)
class Process:
    """One process, named by pid and start time (``started`` None: pid only, e.g. a tag
    written by an older version)."""

    pid: int
    started: int | None

    @classmethod
    def of(cls, pid: int) -> Process:
        """Process ``pid`` as it is now (``started`` None if it is gone already)."""
        return cls(pid, start_time(pid))

    @classmethod
    def parse(cls, tag: str) -> Process | None:
        """A :func:`process_tag` (``PID.STARTTIME``) or a bare pid; None when it is neither."""
        pid, _, started = tag.partition(".")
        if not pid.isascii() or not pid.isdigit() or (started and not (
                started.isascii() and started.isdigit())):
            return None
        return cls(int(pid), int(started) if started and started != "0" else None)

    def alive(self) -> bool:
        """Whether this very process still runs."""
        return alive(self.pid, self.started)
