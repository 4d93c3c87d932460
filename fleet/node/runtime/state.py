"""The runtime contract: the state file every agent runtime (the built-in one and an operator's
own ``runtime: {command: ...}``) keeps in ``$FLEET_STATE_DIR/runtime.json``, and the one
judgement of it (:func:`runtime_problems`) that ``/health``, verify, ``fleet status``, the
dashboard and ``fleet ask`` all go by.

The file is one JSON object, replaced atomically (write a temporary file in the same folder,
then rename it over ``runtime.json``) at least every :data:`HEARTBEAT_EVERY_S` seconds:

- ``state``: ``starting``, ``ready`` (it answers requests now), ``waiting_provider`` (its model
  does not answer), ``failed`` or ``stopped``
- ``heartbeat``: Unix time of this write
- ``started``: Unix time the runtime's process started
- ``pid``: its process id
- optional: ``error`` (why it is not ready), ``release`` (the built-in runtime: the release it
  runs), ``last_round_trip`` (``{ok, at, latency_ms, tokens, error}``), ``handled``, ``errors``

A runtime is healthy when the file exists and follows this schema, its heartbeat is younger
than :data:`STALE_S`, its process has stayed up :data:`STABLE_S` seconds (a runtime that
crashes and is restarted every few seconds never is), its state is ``ready`` and, for the
built-in runtime, it runs the gateway's release.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleet.core import liveness
from fleet.core.atomic import write_atomic

STATE_FILE = "runtime.json"
HEARTBEAT_EVERY_S = 5.0
"""A runtime rewrites its state file at least this often."""
STALE_S = 15.0
"""A heartbeat older than this means the runtime is not running."""
STABLE_S = 5.0
"""A runtime process must have been up this long before its agent counts as healthy."""
STATES = ("starting", "ready", "waiting_provider", "failed", "stopped")
MAX_STATE_BYTES = 64 * 1024
NUMBER_FIELDS = ("heartbeat", "started")
PID_MAX = 4_194_304  # Linux's largest pid_max
REPORTED = ("state", "error", "pid", "started", "heartbeat", "release", "last_round_trip",
            "handled", "errors")
"""The fields of the state file ``/health`` shows."""


def write_state(state_dir: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` (with a fresh ``heartbeat``) atomically."""
    path = Path(state_dir) / STATE_FILE
    write_atomic(path, json.dumps({**state, "heartbeat": time.time()}, sort_keys=True))


def read_state(state_dir: str | Path) -> dict[str, Any] | None:
    """The runtime's last state, or None when there is none (or it is unreadable)."""
    path = Path(state_dir) / STATE_FILE
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def schema_problems(state: Mapping[str, Any]) -> list[str]:
    """Where ``state`` breaks the contract's schema (empty: it keeps it)."""
    problems = []
    if state.get("state") not in STATES:
        problems.append(f"state {state.get('state')!r} is not one of {', '.join(STATES)}")
    for name in NUMBER_FIELDS:
        value = state.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"{name} {value!r} is not a Unix time")
    pid = state.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= PID_MAX:
        problems.append(f"pid {pid!r} is not a process id")
    return problems


PID_REUSE_SLACK_S = 1.0
"""Clock slack when a process's start is compared with a time the runtime was seen alive."""


def process_alive(pid: int, seen: float) -> bool:
    """Whether process ``pid`` is still the runtime that was alive at ``seen`` (Unix time: its
    last heartbeat): it runs, is no zombie, and did not begin after ``seen`` (a later process
    that got the same pid is not it). Where ``/proc`` hides the process (another user's, in
    the gateway's sandbox), signal 0 is all that can be asked (EPERM: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path(f"/proc/{pid}").exists():
        return True  # hidden from this process: signal 0 said it exists
    began = liveness.started_unix(pid)
    return liveness.alive(pid) and began is not None and began <= seen + PID_REUSE_SLACK_S


def runtime_problems(state: Mapping[str, Any] | None, kind: str, release: str,
                     now: float | None = None,
                     alive: Callable[[int, float], bool] | None = None) -> list[str]:
    """Why this runtime state shows an agent that cannot think (empty: it can). ``kind`` is
    the registry's (``builtin`` or ``command``); only the built-in runtime must run
    ``release``, the gateway's. ``alive`` (the gateway gives :func:`process_alive`) checks
    that the process the file names is still the one that wrote its last heartbeat."""
    if state is None:
        return [f"runtime has written no state file ({STATE_FILE} in its state dir): it has "
                "not started, or it does not keep the runtime contract"]
    broken = schema_problems(state)
    if broken:
        return [f"runtime state file {STATE_FILE} breaks the runtime contract: "
                + "; ".join(broken)]
    now = time.time() if now is None else now
    age = now - float(state["heartbeat"])
    up = now - float(state["started"])
    if age > STALE_S:
        failed = f": it failed: {state.get('error')}" if state["state"] == "failed" else ""
        return [f"runtime is not running (last heartbeat {age:.0f} s ago){failed}"]
    if state["state"] in ("failed", "stopped"):
        return [f"runtime is {state['state']}: {state.get('error') or 'no reason given'}"]
    if alive is not None and not alive(int(state["pid"]), float(state["heartbeat"])):
        return [f"runtime is not running (its process {state['pid']} has exited; "
                f"last heartbeat {max(age, 0):.0f} s ago)"]
    if up < STABLE_S:
        return [f"runtime (pid {state['pid']}) started {max(up, 0):.1f} s ago: it counts "
                f"once it has stayed up {STABLE_S:g} s"]
    if kind == "builtin" and state.get("release") != release:
        return [f"runtime runs release {state.get('release')!r}, the gateway {release!r}"]
    if state["state"] != "ready":
        last = state.get("last_round_trip") or {}
        reason = state.get("error") or (last.get("error") if isinstance(last, dict) else None)
        return [f"runtime is {state['state']}: {reason or 'no model round trip yet'}"]
    return []


def runtime_ready(health: Mapping[str, Any] | None) -> bool:
    """Whether a ``/health`` answer shows an agent that is healthy and whose runtime answers
    requests now: what ``fleet ask`` routes by and ``fleet status --think`` shows."""
    if not isinstance(health, Mapping):
        return False
    runtime = health.get("runtime")
    if health.get("status") != "ok" or not isinstance(runtime, Mapping):
        return False
    # compatibility: until 0.3.0: a /health without runtime.ready
    if "ready" not in runtime:
        return runtime.get("state") == "ready"
    return runtime["ready"] is True
