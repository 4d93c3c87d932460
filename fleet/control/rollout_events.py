"""The rollout's typed event stream: what an observer of a rollout (``fleet deploy``'s live view)
is told as it goes, beside the text it streams, and the two pipes between the controller and its
stages' pyinfra processes. Stages, outcomes and verdicts come from the controller
(:mod:`fleet.control.rollout`), which reads the outcomes from the run record, so the record
stays the source of the outcome; a pipe only says "look now".

- **Stage -> controller** (``$FLEET_PHASE_FD``): one JSON line per note. ``{"host": NAME,
  "phase": PHASE}`` when a host enters a phase (``deploys/progress.py``), ``{"host": NAME,
  "recorded": true}`` once the stage wrote a final outcome of the host to the record (the
  audit, a failed operation, the gate's skip): the controller then reads the record. Phases
  are progress only and a "recorded" note is a hint: a line lost or malformed changes nothing
  but the view, and the controller reads the record again when the process ends anyway.
- **Controller -> later stage** (``$FLEET_VERDICT_FD``): after writing its verdict on stage N
  to the record, the controller writes ``N\n`` to stage N+1's pipe; that stage's gate
  (``deploys/gate.py``) waits on it (:class:`VerdictPipe`), then reads the record. End of file
  means the controller is gone.

Both readers take ASCII lines of at most :data:`MAX_LINE` bytes of the expected shape and skip
the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from fleet.core.registry import NAME_RE as HOST_RE
from fleet.core.registry import printable

PHASE_FD_ENV = "FLEET_PHASE_FD"
VERDICT_FD_ENV = "FLEET_VERDICT_FD"
PHASE_RE = re.compile(r"[a-z][a-z-]{0,23}")  # ``preflight``, ``waiting``, ``release``, ...
MAX_LINE = 512
MAX_STAGE = 10**6
STAGE_RE = re.compile(rb"[0-9]{1,6}")  # a verdict note: the judged stage's number


@dataclass(frozen=True)
class StagePlan:
    """One stage of the rollout: ``canary``, ``workers`` or ``plan`` (a dry run), its region
    (a region wave), its hosts."""

    label: str
    region: str | None
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class RolloutPlanned:
    """The rollout starts: its run, what it does and its stages in order."""

    run_id: str
    kind: str  # ``deploy`` or ``rollback``
    release: str  # the release deployed ('' for a rollback)
    dry: bool
    stages: tuple[StagePlan, ...]


@dataclass(frozen=True)
class StageStarted:
    """Stage ``index``'s pyinfra process started (it connects and plans; a later stage then
    waits at its gate for the earlier ones)."""

    index: int


@dataclass(frozen=True)
class HostPhase:
    """A host entered a phase of the deploy (``preflight``, ``waiting``, ``baseline``, ...,
    ``verify``)."""

    host: str
    phase: str


@dataclass(frozen=True)
class HostRecorded:
    """A stage process wrote a final outcome of ``host`` to the run record: a note for the
    controller to read the record now, not an event for the observer."""

    host: str


@dataclass(frozen=True)
class HostDone:
    """A host's outcome as the run record has it now (``ok``, ``failed``, ``rolled_back``,
    ``skipped``, ``planned``) and, unless ok, why."""

    host: str
    status: str
    reason: str = ""

    def __post_init__(self) -> None:  # a node's words: never a terminal's escape sequence
        object.__setattr__(self, "reason", printable(self.reason))


@dataclass(frozen=True)
class RolloutStopped:
    """The rollout stopped after a stage: no later stage deploys."""

    why: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "why", printable(self.why))


@dataclass(frozen=True)
class RegionUnreachable:
    """A region's hosts all failed preflight: the region is skipped."""

    region: str


@dataclass(frozen=True)
class RolloutFinished:
    """The run ended with ``status`` (the record's)."""

    status: str


RolloutEvent = (RolloutPlanned | StageStarted | HostPhase | HostDone | RolloutStopped
                | RegionUnreachable | RolloutFinished)
Observer = Callable[[RolloutEvent], None]


def phase_line(host: str, phase: str) -> bytes:
    """The wire form of a host's phase: one JSON line. ``ValueError`` for a host or phase of
    the wrong shape (they come from the deploy's own names, never from a node)."""
    if not HOST_RE.fullmatch(host) or not PHASE_RE.fullmatch(phase):
        raise ValueError(f"not a host phase: {host!r} {phase!r} (host: an agent name; phase: "
                         "1-24 lowercase letters and '-')")
    return (json.dumps({"host": host, "phase": phase}) + "\n").encode()


def recorded_line(host: str) -> bytes:
    """The wire form of "``host``'s outcome is recorded": one JSON line. ``ValueError`` for a
    host name of the wrong shape."""
    if not HOST_RE.fullmatch(host):
        raise ValueError(f"not a host name: {host!r} (an agent name)")
    return (json.dumps({"host": host, "recorded": True}) + "\n").encode()


def _stage_fd() -> int | None:
    """The phase pipe of this stage process (``$FLEET_PHASE_FD``), None outside a rollout."""
    fd = os.environ.get(PHASE_FD_ENV, "")
    return int(fd) if fd.isdigit() and len(fd) < 10 else None


def _send(fd: int, line: bytes) -> None:
    """Write one note: a single short write, never interleaved with another process's."""
    with contextlib.suppress(OSError):  # the controller is gone: the record still counts
        os.write(fd, line)


def send_phase(host: str, phase: str) -> None:
    """Tell the controller that ``host`` entered ``phase``, when this process was started by
    a rollout (``$FLEET_PHASE_FD``); otherwise, or when the controller is gone, nothing."""
    fd = _stage_fd()
    if fd is not None:
        _send(fd, phase_line(host, phase))


def send_recorded(host: str) -> None:
    """Tell the controller that this stage wrote a final outcome of ``host`` to the run record
    (so it reads the record now), when this process was started by a rollout; otherwise, or
    when the controller is gone, nothing."""
    fd = _stage_fd()
    if fd is not None:
        _send(fd, recorded_line(host))


def read_notes(stream: IO[bytes]) -> Iterator[HostPhase | HostRecorded]:
    """The host phases and "recorded" notes in ``stream`` until its end; lines of another
    shape (not ASCII, longer than :data:`MAX_LINE`, not one of the two) are skipped."""
    while raw := stream.readline(MAX_LINE + 1):
        if not raw.endswith(b"\n"):  # too long (or cut by the end): skip to its end
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(MAX_LINE + 1)
            continue
        if len(raw) > MAX_LINE:
            continue
        note = _note(raw)
        if note is not None:
            yield note


def _note(raw: bytes) -> HostPhase | HostRecorded | None:
    """One line of the phase pipe as a note, or None when it is not one."""
    if not raw.isascii():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) not in ({"host", "phase"}, {"host", "recorded"}):
        return None
    host, phase = data["host"], data.get("phase")
    if not isinstance(host, str) or not HOST_RE.fullmatch(host):
        return None
    if isinstance(phase, str) and PHASE_RE.fullmatch(phase):
        return HostPhase(host=host, phase=phase)
    return HostRecorded(host) if data.get("recorded") is True else None


def verdict_line(stage: int) -> bytes:
    """The wire form of "the verdict on stage ``stage`` is in the record": its number and a
    newline. ``ValueError`` for a number out of range."""
    if not 0 <= stage < MAX_STAGE:
        raise ValueError(f"not a stage number: {stage!r} (0 to {MAX_STAGE - 1})")
    return b"%d\n" % stage


class VerdictPipe:
    """The read end of a later stage's verdict pipe (``$FLEET_VERDICT_FD``), shared by the
    stage's hosts: pyinfra runs them in gevent greenlets, so one host at a time reads the pipe
    (under a lock, cooperative once gevent patched ``threading`` and ``select``) while the others
    wait for the lock; every valid note read is counted, so each waiting host sees it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.notes = 0  # valid notes read so far
        self.closed = False  # end of file: the controller is gone
        self._partial = b""  # the start of a line not ended yet (cut past MAX_LINE)
        self._lock = threading.Lock()

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until more than ``seen`` notes were read or the pipe ended, at most
        ``timeout`` s; True when one of them came."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(0.0, min(timeout, threading.TIMEOUT_MAX))):
            return False
        try:
            while self.notes == seen and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                readable, _, _ = select.select([self.fd], [], [], left)
                if readable:
                    self._take(os.read(self.fd, 4096))
            return True
        finally:
            self._lock.release()

    def _take(self, data: bytes) -> None:
        """Count the valid notes in ``data`` (what one read returned); b'' ends the pipe."""
        if not data:
            self.closed = True
            return
        *lines, partial = (self._partial + data).split(b"\n")
        self._partial = partial[:MAX_LINE + 1]  # longer: skipped when it ends
        self.notes += sum(1 for line in lines if len(line) <= MAX_LINE and STAGE_RE.fullmatch(line))


_verdict_pipes: dict[tuple[int, int], VerdictPipe] = {}  # this process's, by fd and inode


def verdict_pipe() -> VerdictPipe | None:
    """This stage process's verdict pipe (one per process, whichever host asks), or None when
    ``$FLEET_VERDICT_FD`` is missing or does not name a pipe."""
    value = os.environ.get(VERDICT_FD_ENV, "")
    if not value.isdigit() or len(value) > 9:
        return None
    try:
        found = os.fstat(int(value))
    except OSError:
        return None
    if not stat.S_ISFIFO(found.st_mode):
        return None
    key = (int(value), found.st_ino)
    pipe = _verdict_pipes.get(key)
    if pipe is None:
        pipe = _verdict_pipes[key] = VerdictPipe(int(value))
    return pipe
