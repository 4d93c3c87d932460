"""The runtime part of ``/health``: the runtime's state and its last model round trip, and on
request a live round trip made by the gateway itself (a short prompt that must come back with
tokens in time), so a wrong key, an unreachable provider or a silent model fails the check."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from fleet.core.registry import Agent
from fleet.node.provider import Provider, round_trip
from fleet.node.runtime.state import REPORTED, process_alive, read_state, runtime_problems

LIVE_EVERY_S = 5.0
LIVE_TIMEOUT_S = 10.0
_live_lock = threading.Lock()
_live: dict[str, Any] = {}


def live_round_trip(agent: Agent) -> dict[str, Any]:
    """A fresh round trip to the agent's provider (reused for ``LIVE_EVERY_S`` seconds, one at
    a time, so the public /health cannot be used to spend tokens)."""
    with _live_lock:
        last = _live.get(agent.name)
        if last is None or time.monotonic() - last[0] > LIVE_EVERY_S:
            key = os.environ.get(agent.provider_key, "") if agent.provider_key else ""
            provider = Provider(base_url=agent.provider_url or "", key=key, model=agent.model)
            last = (time.monotonic(), round_trip(provider, timeout=LIVE_TIMEOUT_S))
            _live[agent.name] = last
        return dict(last[1])


def runtime_report(agent: Agent, state_dir: str, release: str, live: bool,
                   now: float | None = None) -> dict[str, Any]:
    """``{kind, ready, state, pid, up_s, last_round_trip, ..., problems}`` for /health: the
    runtime contract judged by :func:`fleet.node.runtime.state.runtime_problems`, the same for the
    built-in runtime and an operator's own. ``ready`` is False for an agent with no runtime
    (it cannot think) and whenever there are problems."""
    report: dict[str, Any] = {"kind": agent.runtime, "ready": False, "problems": []}
    if agent.runtime == "none":
        return report
    now = time.time() if now is None else now
    state = read_state(state_dir)
    report["problems"] = runtime_problems(state, agent.runtime, release, now,
                                          alive=process_alive)
    if state is not None:
        report.update({key: state.get(key) for key in REPORTED})
        pid, started, beat = state.get("pid"), state.get("started"), state.get("heartbeat")
        if isinstance(started, int | float) and not isinstance(started, bool):
            report["up_s"] = round(now - started, 1)
        if (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
                and isinstance(beat, int | float) and not isinstance(beat, bool)):
            report["alive"] = process_alive(pid, beat)
    if live and agent.provider_url:
        result = live_round_trip(agent)
        report["live_round_trip"] = result
        if not result["ok"]:
            report["problems"].append(f"live model round trip failed: {result['error']}")
    report["ready"] = not report["problems"]
    return report
