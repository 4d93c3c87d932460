"""Verify (``fleet-nodectl verify``) against a simulated node: systemd's view of the gateway and
runtime units (``systemctl show``) and the gateway's /health move on a clock of the test's
own. A runtime that exits at once, exits after 2 s (restarted each time, RestartSec=1) or never
writes its state fails verify, naming its unit and the reason, whatever moment of its restart
cycle verify starts at (5 of 5); a runtime that keeps working passes."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.node import nodectl

RELEASE = "abc123abc123"
GATEWAY = "fleet-agent-bezalel.service"
RUNTIME = "fleet-runtime-bezalel.service"
NO_STATE = ("runtime has written no state file (runtime.json in its state dir): it has not "
            "started, or it does not keep the runtime contract")
RESTART_S = 1.0  # RestartSec= of the runtime unit


@dataclass
class Runtime:
    """A runtime unit started at ``start`` whose process lives ``life`` seconds (inf: stays
    up), restarted ``RESTART_S`` after each exit; ``writes`` whether it keeps runtime.json."""

    start: float
    life: float
    writes: bool = True
    previous_s: float = 0.0
    """How long the state file of the process before the restart (``stopped``) is seen."""

    def phase(self, now: float) -> tuple[int, float]:
        """(restarts so far, seconds into the current cycle)."""
        if math.isinf(self.life):
            return 0, now - self.start
        period = self.life + RESTART_S
        restarts = int((now - self.start) // period)
        return restarts, now - self.start - restarts * period

    def unit(self, now: float) -> dict[str, str]:
        restarts, into = self.phase(now)
        if into >= self.life:
            return {"ActiveState": "activating", "SubState": "auto-restart",
                    "NRestarts": str(restarts), "Result": "exit-code", "ExecMainStatus": "1",
                    "MainPID": "0"}
        entered = self.start + restarts * (self.life + RESTART_S) if restarts else self.start
        return {"ActiveState": "active", "SubState": "running", "NRestarts": str(restarts),
                "MainPID": str(1000 + restarts), "Result": "success",
                "ActiveEnterTimestamp": f"t{entered:.3f}",
                "ActiveEnterTimestampMonotonic": str(int(entered * 1e6))}

    def health(self, now: float) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": "ok", "release": RELEASE, "problems": [],
                                "runtime": {"kind": "command", "ready": False, "state": None}}
        restarts, into = self.phase(now)
        if into < self.previous_s:
            body["runtime"].update(state="stopped", up_s=600.0, alive=False)
            body["problems"] = ["runtime is stopped: no reason given"]
        elif not self.writes:
            body["problems"] = [NO_STATE]
        else:
            body["runtime"].update(state="ready", up_s=round(into, 1))
            if into < 5.0:
                body["problems"] = [f"runtime (pid {1000 + restarts}) started {into:.1f} s "
                                    "ago: it counts once it has stayed up 5 s"]
        body["runtime"]["ready"] = not body["problems"]
        if body["problems"]:
            body["status"] = "fail"
        return (200 if body["status"] == "ok" else 503), body


class Node:
    """The simulated node: a clock that only the code under test moves (by sleeping)."""

    def __init__(self, runtime: Runtime, now: float = 1000.0) -> None:
        self.now, self.runtime = now, runtime
        self.asked: list[str] = []

    def unit_state(self, unit: str) -> dict[str, str]:
        self.asked.append(unit)
        if unit == RUNTIME:
            return self.runtime.unit(self.now)
        return {"ActiveState": "active", "SubState": "running", "NRestarts": "0",
                "MainPID": "77", "ActiveEnterTimestamp": "gateway-start",
                "ActiveEnterTimestampMonotonic": str(int((self.now - 600) * 1e6))}

    def get_health(self, port: int, timeout: float = 2.0,
                   roundtrip: bool = False) -> tuple[int, dict[str, Any]]:
        return self.runtime.health(self.now)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def verify(node: Node, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], float]:
    """Run ``fleet-nodectl verify`` on ``node``: (problems, seconds it took on node time)."""
    monkeypatch.setattr(nodectl, "unit_state", node.unit_state)
    monkeypatch.setattr(nodectl, "get_health", node.get_health)
    monkeypatch.setattr(nodectl, "sleep", node.sleep)
    monkeypatch.setattr(nodectl, "monotonic_us", lambda: int(node.now * 1e6))
    began = node.now
    result = nodectl.verify(argparse.Namespace(
        release=RELEASE, config_hash="", soul_sha="", unit=GATEWAY, runtime_unit=RUNTIME,
        port=8646, timeout=20.0, rollback=False))
    assert result["ok"] is not bool(result["problems"])
    return result["problems"], node.now - began


@pytest.mark.parametrize("offset", [0.0, 0.4, 0.9, 1.6, 2.3])  # 5 deploys, 5 moments
@pytest.mark.parametrize(("life", "writes", "reason"), [
    (0.05, False, "does not stay up"),  # exits at once
    (2.0, True, "restarted during verify"),  # exits after 2 s
])
def test_a_runtime_that_exits_fails_verify_at_any_moment_of_its_restarts(
        monkeypatch: pytest.MonkeyPatch, offset: float, life: float, writes: bool,
        reason: str) -> None:
    node = Node(Runtime(start=1000.0 - offset, life=life, writes=writes))
    problems, took = verify(node, monkeypatch)
    assert problems[0].startswith(RUNTIME), problems  # the unit, and so the agent, named
    assert reason in problems[0] or "does not stay up" in problems[0], problems
    if not writes:
        assert problems[1:] == [NO_STATE]  # with what its /health said
    assert took < 6.0  # found while waiting for /health, not after its whole timeout


def test_a_crashed_runtime_is_named_with_systemds_result() -> None:
    before = Runtime(start=0, life=0.0).unit(0.5)
    assert nodectl.unit_problems(RUNTIME, before, before) == [
        f"{RUNTIME} is activating/auto-restart (result exit-code, exit status 1, restarts 0): "
        "it does not stay up"]


def test_a_runtime_that_never_writes_its_state_fails_verify_naming_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(Runtime(start=999.0, life=math.inf, writes=False))
    problems, took = verify(node, monkeypatch)
    assert problems == [NO_STATE]
    assert 20.0 <= took < 21.0  # it got the whole timeout to write it


def test_a_runtime_that_stays_up_and_keeps_its_contract_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(Runtime(start=999.5, life=math.inf))
    problems, took = verify(node, monkeypatch)
    assert problems == []
    assert 4.5 <= took < 7.0  # it had to stay up its stability window
    assert RUNTIME in node.asked and GATEWAY in node.asked


def test_an_agent_without_a_runtime_checks_its_gateway_unit_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(Runtime(start=0.0, life=math.inf))
    monkeypatch.setattr(nodectl, "get_health", lambda port, timeout=2.0, roundtrip=False: (
        200, {"status": "ok", "release": RELEASE, "problems": [], "runtime": {
            "kind": "none", "ready": False}}))
    monkeypatch.setattr(nodectl, "unit_state", node.unit_state)
    monkeypatch.setattr(nodectl, "sleep", node.sleep)
    monkeypatch.setattr(nodectl, "monotonic_us", lambda: int(node.now * 1e6))
    result = nodectl.verify(argparse.Namespace(
        release=RELEASE, config_hash="", soul_sha="", unit=GATEWAY, runtime_unit=None,
        port=8646, timeout=20.0, rollback=False))
    assert result["problems"] == [] and set(node.asked) == {GATEWAY}


def test_the_state_file_of_the_runtime_before_the_restart_is_waited_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a deploy's restart /health still shows the stopped runtime's file for a
    while (the new one writes its own once it has started): verify waits for it."""
    node = Node(Runtime(start=1000.0, life=math.inf, previous_s=4.0))
    problems, took = verify(node, monkeypatch)
    assert problems == []
    assert 4.9 <= took < 7.0  # not settled on the old file: waited for the new one


def test_an_agent_up_long_since_is_verified_with_one_health_and_one_look_at_each_unit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A no-change deploy verifies agents up for long: /health first, then one look at each
    unit, which shows it active since before that /health by more than its stability window
    (so it stayed up across it): at 50 nodes sharing a machine every ``systemctl show``
    counts (five looks at each unit at stop 36, four at stop 37, two at stop 38)."""
    node = Node(Runtime(start=1.0, life=math.inf))
    healths: list[float] = []
    answer = node.get_health
    node.get_health = lambda port, timeout=2.0, roundtrip=False: (  # type: ignore[method-assign]
        healths.append(node.now) or answer(port, timeout, roundtrip))
    problems, took = verify(node, monkeypatch)
    assert problems == [] and took == 0.0 and len(healths) == 1
    assert (node.asked.count(GATEWAY), node.asked.count(RUNTIME)) == (1, 1), node.asked


@pytest.mark.parametrize("started_before_health", [
    0.0, 0.5, nodectl.RUNTIME_STABLE_S - 0.1,  # within its window before /health
    -0.2,  # restarted right after /health answered (a look sees a later activation)
])
def test_a_runtime_started_within_its_window_is_watched_for_all_of_it(
        monkeypatch: pytest.MonkeyPatch, started_before_health: float) -> None:
    """One look passes only a unit active since before /health by its whole stability
    window; one started later, however little, is watched until it has stayed up that long."""
    node = Node(Runtime(start=0.0, life=math.inf))
    node.runtime.start = node.now - started_before_health
    node.runtime.previous_s = 0.0
    answer = node.runtime.health
    node.runtime.health = lambda now: (200, {  # type: ignore[method-assign]
        **answer(now + 10.0)[1], "status": "ok"})  # its /health is good from the start
    problems, took = verify(node, monkeypatch)
    assert problems == []
    assert took >= nodectl.RUNTIME_STABLE_S - max(started_before_health, 0.0) - 1e-6
    assert node.asked.count(RUNTIME) >= 2  # looked at again after its window


def audit_facts(node: Node, monkeypatch: pytest.MonkeyPatch, **args: Any) -> dict[str, Any]:
    """``fleet-nodectl verify --agent bezalel`` on ``node``: the outcome with its audit facts
    (the node's files read from wherever nodectl looks; only units and /health matter here)."""
    monkeypatch.setattr(nodectl, "unit_state", node.unit_state)
    monkeypatch.setattr(nodectl, "get_health", node.get_health)
    monkeypatch.setattr(nodectl, "sleep", node.sleep)
    monkeypatch.setattr(nodectl, "monotonic_us", lambda: int(node.now * 1e6))
    monkeypatch.setattr(nodectl, "rollback", lambda *_, **__: {"ok": True})
    namespace = argparse.Namespace(
        release=RELEASE, config_hash="", soul_sha="", unit=GATEWAY, runtime_unit=RUNTIME,
        port=8646, timeout=20.0, rollback=True, restore_env=False, agent="bezalel",
        login_user="root", **args)
    looks = nodectl.Looks()
    result = dict(nodectl.verify(namespace, looks))
    result["facts"] = nodectl.facts(namespace, looks)
    return result


def test_the_audit_facts_after_a_good_verify_ask_neither_systemd_nor_health_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(Runtime(start=1.0, life=math.inf))
    healths: list[float] = []
    answer = node.get_health
    node.get_health = lambda port, timeout=2.0, roundtrip=False: (  # type: ignore[method-assign]
        healths.append(node.now) or answer(port, timeout, roundtrip))
    result = audit_facts(node, monkeypatch)
    assert result["ok"] and len(healths) == 1
    assert (node.asked.count(GATEWAY), node.asked.count(RUNTIME)) == (1, 1), node.asked
    facts = result["facts"]
    assert facts["health_status"] == 200 and facts["health"]["release"] == RELEASE
    assert facts["unit"]["ActiveState"] == "active" and facts["unit"]["MainPID"] == "77"


def test_the_audit_facts_after_a_failed_verify_are_asked_afresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failure (and its rollback) the node has changed: the audit sees it anew."""
    node = Node(Runtime(start=0.0, life=0.05, writes=False))
    result = audit_facts(node, monkeypatch)
    assert not result["ok"]
    looks_after = node.asked.count(GATEWAY)
    health_status = result["facts"]["health_status"]
    assert health_status == 503
    assert node.asked[-1] == GATEWAY and looks_after >= 2


@settings(max_examples=500, deadline=None)
@given(unit=st.sampled_from([GATEWAY, RUNTIME]),
       active=st.sampled_from(["active", "activating", "deactivating", "failed", ""]),
       entered=st.one_of(st.integers(min_value=-10**13, max_value=10**13),
                         st.text(max_size=12)),
       asked=st.integers(min_value=0, max_value=10**13))
def test_one_look_passes_exactly_a_unit_active_since_its_window_before_health(
        unit: str, active: str, entered: int | str, asked: int) -> None:
    """For any look at a unit (any state, any activation time, a value systemd never gives)
    and any moment /health was asked: one look passes it only when it is active and became
    active at least its whole stability window before that moment."""
    state = {"ActiveState": active, "SubState": "running", "NRestarts": "0", "MainPID": "7",
             "ActiveEnterTimestampMonotonic": str(entered)}
    window_us = int((nodectl.RUNTIME_STABLE_S if unit == RUNTIME else nodectl.STABLE_S) * 1e6)
    try:  # a value that is no number: unknown, never passes
        since = int(entered)
    except ValueError:
        since = 0
    assert nodectl.up_since_before(unit, state, asked) is (
        active == "active" and since > 0 and since <= asked - window_us)
