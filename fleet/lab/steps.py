"""The lab's long waits (building the base rootfs, building the model server, fetching the
model) as timed steps: each says what it does and how long it usually takes on this machine
(the last time it ran here, kept in ``step-times.json`` in the cache), and when it ended.

A progress sink is any ``callable(message)``; one that also has ``begin(label, usual_s)`` and
``end(label, elapsed_s, ok)`` (the CLI's, on a terminal) shows the step live instead: see
:class:`fleet.cli.progress.LabProgress`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fleet.core.atomic import write_atomic
from fleet.lab.paths import cache_dir

TIMES_FILE = "step-times.json"
Progress = Callable[[str], None]


def _times_path() -> Path:
    return cache_dir() / TIMES_FILE


def usual_seconds(key: str) -> float | None:
    """How long step ``key`` took the last time it ran to the end on this machine."""
    try:
        value = json.loads(_times_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def remember(key: str, seconds: float) -> None:
    """Keep ``seconds`` as step ``key``'s usual time (best effort: the cache may be
    read-only)."""
    path = _times_path()
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(known, dict):
            known = {}
        known[key] = round(seconds, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(known, sort_keys=True, indent=1))
    except (OSError, ValueError):
        pass


def describe(label: str, usual: float | None) -> str:
    """The step's opening line: ``label`` and its usual time here, when known."""
    return f"{label} (usually {usual:.0f} s here)" if usual is not None else label


@contextlib.contextmanager
def long_step(progress: Progress, key: str, label: str) -> Iterator[None]:
    """Run the block as step ``key``: announced (live on a terminal sink), its end and time
    reported, and its time kept as the usual one when it succeeded."""
    usual = usual_seconds(key)
    begin = getattr(progress, "begin", None)
    end = getattr(progress, "end", None)
    started = time.monotonic()
    if begin is not None:
        begin(label, usual)
    else:
        progress(describe(label, usual))
    ok = False
    try:
        yield
        ok = True
    finally:
        elapsed = time.monotonic() - started
        if end is not None:
            end(label, elapsed, ok)
        else:
            progress(f"{label}: {'done' if ok else 'stopped'} after {elapsed:.0f} s")
        if ok:
            remember(key, elapsed)
