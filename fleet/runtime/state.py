"""The runtime's state file (``<state dir>/runtime.json``): written by the runtime, read by the
gateway's ``/health``. Replaced atomically; a heartbeat shows the runtime is alive."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATE_FILE = "runtime.json"
STALE_S = 15.0
"""A heartbeat older than this means the runtime is not running."""
MAX_STATE_BYTES = 64 * 1024


def write_state(state_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with a fresh ``heartbeat``) atomically."""
    path = Path(state_dir) / STATE_FILE
    partial = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    partial.write_text(json.dumps({**state, "heartbeat": time.time()}, sort_keys=True))
    partial.replace(path)


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


def state_problems(state: dict[str, Any] | None, release: str,
                   now: float | None = None) -> list[str]:
    """Why this runtime state shows an agent that cannot think (empty: it can)."""
    if state is None:
        return ["runtime has not started (no state file)"]
    now = time.time() if now is None else now
    problems = []
    age = now - float(state.get("heartbeat") or 0)
    if age > STALE_S:
        problems.append(f"runtime is not running (last heartbeat {age:.0f} s ago)")
    elif state.get("release") != release:
        problems.append(f"runtime runs release {state.get('release')!r}, the gateway "
                        f"{release!r}")
    elif state.get("state") != "ready":
        last = state.get("last_round_trip") or {}
        problems.append(f"runtime is {state.get('state')}: "
                        f"{last.get('error') or 'no model round trip yet'}")
    return problems
