"""The rollout's typed event stream: what an observer of a rollout (``fleet deploy``'s live view)
is told as it goes, beside the text it streams. Stages, outcomes and verdicts come from the
controller (:mod:`fleet.control.rollout`), which reads the outcomes from the run record, so
the record stays the source of the outcome. Host phases come from each stage's pyinfra process
(``deploys/progress.py``) over a pipe whose descriptor is in ``$FLEET_PHASE_FD``: one JSON
line per change, ``{"host": NAME, "phase": PHASE}``. Phases are progress only: a line lost or
malformed changes nothing but the view.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from fleet.core.registry import NAME_RE as HOST_RE
from fleet.core.registry import printable

PHASE_FD_ENV = "FLEET_PHASE_FD"
PHASE_RE = re.compile(r"[a-z][a-z-]{0,23}")  # ``preflight``, ``waiting``, ``release``, ...
MAX_LINE = 512


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


def send_phase(host: str, phase: str) -> None:
    """Tell the controller that ``host`` entered ``phase``, when this process was started by
    a rollout (``$FLEET_PHASE_FD``); otherwise, or when the controller is gone, nothing."""
    fd = os.environ.get(PHASE_FD_ENV, "")
    if not fd.isdigit():
        return
    with contextlib.suppress(OSError):  # the controller is gone: the record still counts
        os.write(int(fd), phase_line(host, phase))  # one short write: never interleaved


def read_phases(stream: IO[bytes]) -> Iterator[HostPhase]:
    """The host phases in ``stream`` until its end; lines of another shape are skipped."""
    for raw in stream:
        if len(raw) > MAX_LINE:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        host, phase = data.get("host"), data.get("phase")
        if (isinstance(host, str) and isinstance(phase, str) and HOST_RE.fullmatch(host)
                and PHASE_RE.fullmatch(phase)):
            yield HostPhase(host=host, phase=phase)
