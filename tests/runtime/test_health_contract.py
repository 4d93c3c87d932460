"""Health means it works: the runtime contract (``runtime.json``) is judged the same for the
built-in runtime and an operator's own, and ``/health``, ``fleet status``, the dashboard and
``fleet ask`` all go by that one verdict. A custom runtime that exits at once (no state),
exits after 2 s (restarted every few seconds: its process never stays up) or never writes its
state is never healthy, never ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fleet.control import status as status_module
from fleet.control.status import OK, probe_agent, probe_health
from fleet.core import liveness
from fleet.core.registry import Agent, load_registry
from fleet.dashboard.data import Dashboard
from fleet.node.runtime.ask import thinks
from fleet.node.runtime.state import (
    STABLE_S,
    STALE_S,
    process_alive,
    read_state,
    runtime_problems,
    runtime_ready,
    write_state,
)
from tests.bus.conftest import Gateway, free_port

NOW = 1_800_000_000.0
GOOD = {"state": "ready", "heartbeat": NOW - 1, "started": NOW - 60, "pid": 4242,
        "release": "abc123abc123"}


@pytest.mark.parametrize(("change", "kind", "expected"), [
    ({}, "builtin", None),
    ({}, "command", None),
    ({"release": None}, "command", None),  # an operator's runtime need not know the release
    ({"release": "000000000000"}, "builtin",
     "runtime runs release '000000000000', the gateway 'abc123abc123'"),
    ({"heartbeat": NOW - STALE_S - 5}, "command",
     "runtime is not running (last heartbeat 20 s ago)"),
    ({"heartbeat": NOW - STALE_S - 5, "state": "failed", "error": "config: bad"}, "builtin",
     "runtime is not running (last heartbeat 20 s ago): it failed: config: bad"),
    ({"started": NOW - 2}, "command",
     f"runtime (pid 4242) started 2.0 s ago: it counts once it has stayed up {STABLE_S:g} s"),
    ({"state": "waiting_provider", "error": "model server down"}, "command",
     "runtime is waiting_provider: model server down"),
    ({"state": "failed", "error": "no provider"}, "command", "runtime is failed: no provider"),
    ({"state": "alive"}, "command", "runtime state file runtime.json breaks the runtime "
     "contract: state 'alive' is not one of starting, ready, waiting_provider, failed, "
     "stopped"),
    ({"pid": None, "started": "soon"}, "command", "runtime state file runtime.json breaks the "
     "runtime contract: started 'soon' is not a Unix time; pid None is not a process id"),
    ({"pid": 10**30}, "command", "runtime state file runtime.json breaks the runtime "
     "contract: pid 1000000000000000000000000000000 is not a process id"),
])
def test_one_judgement_of_the_runtime_state(change: dict[str, Any], kind: str,
                                            expected: str | None) -> None:
    state = {**GOOD, **change}
    assert runtime_problems(state, kind, "abc123abc123", now=NOW) == (
        [expected] if expected else [])


def test_no_state_file_is_a_problem_for_every_runtime_kind() -> None:
    for kind in ("builtin", "command"):
        assert runtime_problems(None, kind, "r", now=NOW) == [
            "runtime has written no state file (runtime.json in its state dir): it has not "
            "started, or it does not keep the runtime contract"]


def test_ready_is_read_from_health_the_same_everywhere() -> None:
    assert runtime_ready({"status": "ok", "runtime": {"ready": True, "state": "ready"}})
    assert not runtime_ready({"status": "ok", "runtime": {"ready": False, "state": "ready"}})
    assert not runtime_ready({"status": "fail", "runtime": {"ready": True}})
    assert not runtime_ready({"status": "ok", "runtime": {"kind": "none", "ready": False}})
    assert not runtime_ready(None)


@pytest.fixture
def custom_gateway(tmp_path: Path) -> Iterator[tuple[Agent, Gateway]]:
    """A real gateway of an agent whose runtime is an operator's program (capability code)."""
    port = free_port()
    (tmp_path / "agent.py").write_text("raise SystemExit(1)\n")
    (tmp_path / "souls").mkdir()
    (tmp_path / "souls" / "bezalel.md").write_text("You are bezalel.\n")
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "registry.yaml").write_text(f"""\
fleet:
  known_hosts: known_hosts
wizards:
  bezalel:
    host: 127.0.0.1
    role: worker
    model: test/m
    gateway_port: {port}
    capabilities: [code]
    runtime: {{command: [python3, agent.py], ship: [agent.py]}}
""")
    config = tmp_path / "config.json"
    config.write_text("{}\n")
    gateway = Gateway("bezalel", tmp_path / "registry.yaml", tmp_path / "state",
                      {"FLEET_CONFIG": str(config),
                       "FLEET_SOUL": str(tmp_path / "souls" / "bezalel.md")})
    gateway.state.mkdir()
    gateway.start()
    try:
        yield load_registry(tmp_path / "registry.yaml").get("bezalel"), gateway
    finally:
        gateway.stop()


def custom_state(**change: Any) -> dict[str, Any]:
    """A custom runtime's state, up for a minute, ready, unless ``change`` says otherwise."""
    return {"state": "ready", "started": time.time() - 60, "pid": os.getpid(), **change}


def health(agent: Agent) -> tuple[int, dict[str, Any]]:
    with requests.get(agent.health_endpoint, timeout=10) as answer:
        return answer.status_code, answer.json()


@pytest.mark.parametrize(("state", "reason"), [
    (None, "runtime has written no state file"),  # exits at once, or never writes its state
    ({"started": "now"}, "breaks the runtime contract"),
    ("restarting", " s ago: it counts once it has stayed up"),  # exits after 2 s, restarted
    ("exited", "runtime is not running (its process "),  # its file outlives it a while
    ("stale", "runtime is not running (last heartbeat 30 s ago)"),  # died, not restarted
])
def test_a_custom_runtime_that_does_not_work_is_never_healthy_nor_ready(
        custom_gateway: tuple[Agent, Gateway], monkeypatch: pytest.MonkeyPatch,
        state: Any, reason: str) -> None:
    agent, gateway = custom_gateway
    if state == "restarting":
        write_state(gateway.state, custom_state(started=time.time() - 1))
    elif state == "exited":
        gone = subprocess.Popen(["true"])
        gone.wait()
        write_state(gateway.state, custom_state(pid=gone.pid))
    elif state == "stale":
        (gateway.state / "runtime.json").write_text(json.dumps(
            custom_state(heartbeat=time.time() - 30)))
    elif state is not None:
        write_state(gateway.state, custom_state(**state))
    code, body = health(agent)
    assert code == 503, body
    assert body["runtime"]["kind"] == "command" and body["runtime"]["ready"] is False
    assert any(reason in problem for problem in body["problems"]), body["problems"]
    assert not thinks(agent)  # fleet ask never routes to it
    found, _ = probe_health(agent, timeout=10, think=True)
    assert found.startswith("HTTP 503: ") and reason in found  # fleet status --think
    registry = load_registry(gateway.registry)
    monkeypatch.setattr(status_module, "probe_ssh", lambda *args: (OK, "running"))
    probed = probe_agent(agent, registry, timeout=10)
    view = Dashboard(gateway.registry, gateway.registry.parent)._view(
        registry, agent, probed, {}, None, "2026-12-05T10:00:00Z")
    assert view.state == "down" and any(reason in problem for problem in view.problems)


def test_a_custom_runtime_that_keeps_the_contract_is_healthy_and_ready(
        custom_gateway: tuple[Agent, Gateway]) -> None:
    agent, gateway = custom_gateway
    write_state(gateway.state, custom_state())
    code, body = health(agent)
    assert code == 200, body
    assert body["runtime"]["ready"] is True and body["runtime"]["up_s"] >= 59
    assert thinks(agent)
    assert probe_health(agent, timeout=10)[0] == OK


def test_a_runtime_that_cannot_start_names_the_cause_in_its_state(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text("""\
wizards:
  bezalel:
    host: 127.0.0.1
    role: worker
    model: test/m
    provider: {base_url: 'http://127.0.0.1:9/v1', api_key: MOCK_API_KEY}
    config: {max_tokens: lots}
""")
    env = {"PATH": "/usr/bin:/bin", "FLEET_AGENT": "bezalel",
           "FLEET_REGISTRY": str(tmp_path / "registry.yaml"), "FLEET_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "fleet.node.runtime"], capture_output=True,
                          text=True, env=env, timeout=60, check=False,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 1
    assert "config: max_tokens 'lots' is not a whole number" in done.stderr
    state = read_state(tmp_path)
    assert state is not None and state["state"] == "failed"
    assert "max_tokens 'lots'" in state["error"]
    problems = runtime_problems(state, "builtin", "r", now=state["started"] + 1)
    assert problems[0].startswith("runtime is failed: ") and "max_tokens 'lots'" in problems[0]


def test_the_gateway_checks_that_the_runtimes_process_still_runs() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    state = {**GOOD, "pid": gone.pid}
    assert runtime_problems(state, "command", "abc123abc123", now=NOW,
                            alive=process_alive) == [
        f"runtime is not running (its process {gone.pid} has exited; last heartbeat 1 s ago)"]
    assert runtime_problems({**GOOD, "pid": os.getpid()}, "command", "r", now=NOW,
                            alive=process_alive) == []


def test_a_process_that_got_the_runtimes_pid_later_is_not_the_runtime() -> None:
    """pid reuse: the state file names a pid that another process, begun after the last
    heartbeat, holds now."""
    later = subprocess.Popen(["sleep", "30"])
    try:
        began = liveness.started_unix(later.pid)
        assert began is not None and abs(began - time.time()) < 5
        assert process_alive(later.pid, began) is True  # the runtime that wrote it
        assert process_alive(later.pid, began - 60) is False  # its pid, not its process
        state = {**GOOD, "pid": later.pid, "started": time.time() - 60,
                 "heartbeat": time.time() - 5}  # fresh, but older than the process
        assert runtime_problems(state, "command", "r", alive=process_alive)[0].startswith(
            f"runtime is not running (its process {later.pid} has exited")
    finally:
        later.kill()
        later.wait()


def test_a_runtime_hidden_from_the_gateway_counts_as_alive_only_while_its_heartbeat_is_fresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``/proc`` hides the runtime (another user's process, EPERM to signal 0, or no
    ``/proc`` entry in the gateway's sandbox), its start time cannot be read: signal 0 is
    all there is, so a reused pid passes, but only until the heartbeat is stale (STALE_S)."""
    hidden = 4_194_000  # no such /proc entry here
    assert not Path(f"/proc/{hidden}").exists()

    def refused(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    for kill in (refused, lambda pid, signal: None):  # EPERM; exists but not in /proc
        monkeypatch.setattr(os, "kill", kill)
        assert process_alive(hidden, time.time()) is True
        fresh = {**GOOD, "pid": hidden, "heartbeat": NOW - 1}
        assert runtime_problems(fresh, "command", "r", now=NOW, alive=process_alive) == []
        stale = {**fresh, "heartbeat": NOW - STALE_S - 1}
        assert runtime_problems(stale, "command", "r", now=NOW, alive=process_alive)[0] == (
            f"runtime is not running (last heartbeat {STALE_S + 1:.0f} s ago)")
    monkeypatch.undo()
    assert process_alive(hidden, time.time()) is False  # really gone: signal 0 says so
