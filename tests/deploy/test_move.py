"""``fleet move``: ``--to`` checked where it enters, and the order of the steps, with the
servers and deploys played by a stand-in (:class:`fleet.control.move.Nodes`): a move that
fails before the registry changes leaves the agent on its old server, started again."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.cli import main
from fleet.control import move
from fleet.control.move import MoveError, MovePlan, Nodes, check_target, plan_move
from fleet.control.rollout import RolloutResult
from fleet.core.errors import StateError
from fleet.core.registry import Agent, Registry, is_host, load_registry
from fleet.node import nodectl
from fleet.node.nodectl import Retired

REGISTRY = """\
fleet:
  known_hosts: known_hosts
wizards:
  ezra-primary:
    host: 192.0.2.10
    role: orchestrator
    model: m
  bezalel:
    host: 192.0.2.20   # moves
    role: worker
    model: m
  allegro:
    host: 192.0.2.30
    role: worker
    model: m
    gateway_port: 8650
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq2m5rA3X0Nq8s3rVJ0a6Dk0mRzqYwQWv6cH1o2X0Zz"
SPARE = "192.0.2.40"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry of 3 agents with host keys pinned for them and for the spare."""
    (tmp_path / "souls").mkdir()
    for name in ("ezra-primary", "bezalel", "allegro"):
        (tmp_path / "souls" / f"{name}.md").write_text("soul\n")
    hosts = ["192.0.2.10", "192.0.2.20", "192.0.2.30", SPARE]
    (tmp_path / "known_hosts").write_text("".join(f"{host} {KEY}\n" for host in hosts))
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    monkeypatch.setenv("FLEET_RECORDS_DIR", str(tmp_path / "records"))
    return load_registry(path)


@pytest.mark.parametrize(("to", "message"), [
    ("--purge", "--to '--purge' looks like an option, not a host"),
    ("-x", "--to '-x' looks like an option, not a host"),
    ("http://192.0.2.40", "--to 'http://192.0.2.40' is not a hostname or IP address (at most "
                          "253 characters; no scheme, port, path or spaces)"),
    ("192.0.2.40\n", "--to '192.0.2.40\\n' is not a hostname or IP address"),
    ("a" * 254, "is not a hostname or IP address"),
    ("fe80::1%eth0", "--to 'fe80::1%eth0' is not a hostname or IP address"),
    ("192.0.2.20", "bezalel already runs on 192.0.2.20"),
    # left alone at stop 34: names the resolver reads as addresses (one server, two names)
    ("10", "--to '10' is the address 0.0.0.10 to ssh and the resolver (a legacy IPv4 form)"),
    ("0xc0.0.532", "--to '0xc0.0.532' is the address 192.0.2.20 to ssh and the resolver"),
    ("3221226004", "--to '3221226004' is the address 192.0.2.20 to ssh and the resolver"),
    ("web.42", "--to 'web.42' ends in an all-digit label, which resolvers take for an address"),
    ("192.0.2.10", "192.0.2.10:8646 is ezra-primary's gateway: two agents cannot share a "
                   "host and a gateway port"),
    ("::ffff:192.0.2.10", "::ffff:192.0.2.10:8646 is ezra-primary's gateway"),  # one server
    ("::ffff:c000:214", "bezalel already runs on ::ffff:c000:214"),  # 192.0.2.20 spelled so
    ("192.0.2.30", "192.0.2.30 is allegro's host"),
    ("192.0.2.99", "no host key pinned for 192.0.2.99: first contact is explicit"),
])
def test_to_is_checked_where_it_enters(registry: Registry, to: str, message: str) -> None:
    with pytest.raises(MoveError, match=re.escape(message)):
        check_target(registry, "bezalel", to)


def test_a_shared_host_is_allowed_when_asked(registry: Registry) -> None:
    known = registry.path.parent / "known_hosts"
    known.write_text(known.read_text() + f"[192.0.2.30]:22 {KEY}\n")
    assert check_target(registry, "bezalel", "192.0.2.30", shared=True).host == "192.0.2.30"


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(to=st.text(max_size=300))
def test_only_hosts_pass_the_check(registry: Registry, to: str) -> None:
    try:
        moved = check_target(registry, "bezalel", to)
    except MoveError:
        return
    assert is_host(moved.host) and not to.startswith("-") and len(to) <= 253
    assert moved.host == to == SPARE  # the one free host with a pinned key


def test_the_cli_prints_one_line_and_a_hint(registry: Registry) -> None:
    done = CliRunner().invoke(main, ["--registry", str(registry.path), "move", "bezalel",
                                     "--to=--purge", "--yes"])
    assert done.exit_code == 1
    assert done.output == ("Error: --to '--purge' looks like an option, not a host\n"
                           "Hint: Give the new server's host name or IP address: --to HOST.\n")


class FakeNodes(Nodes):
    """The servers and deploys: every call noted; ``fail`` names the step that fails."""

    def __init__(self, registry: Registry, fail: set[str]) -> None:
        super().__init__(registry, lambda line: None)
        self.fail, self.calls = fail, []  # type: ignore[var-annotated]

    def step(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise StateError(f"{name} failed here")

    def reachable(self, agent: Agent, nodectl: bool) -> None:
        self.step("reachable", agent.host)

    def deploy(self, registry: Registry, limit: tuple[str, ...]) -> RolloutResult:
        hosts = {agent.name: agent.host for agent in registry}
        self.calls.append(("deploy", hosts["bezalel"], limit))
        ok = not (("deploy-new" in self.fail and limit) or ("redeploy" in self.fail and not limit))
        return RolloutResult(f"run-{len(self.calls)}", {"status": "ok" if ok else "failed",
                                                        "hosts": {}})

    def hand_over(self, agent: Agent) -> str:
        self.step("hand_over", agent.host)
        return "20261207T000000.000000Z"

    def carry(self, old: Agent, new: Agent, snapshot: str) -> None:
        self.step("carry", old.host, new.host, snapshot)

    def resume(self, agent: Agent) -> None:
        self.step("resume", agent.host)

    def retire(self, agent: Agent, purge: bool) -> Retired:
        self.step("retire", agent.host, purge)
        return {"removed": [], "kept": ["/var/lib/fleet/bezalel"]}


def run(registry: Registry, fail: set[str]) -> tuple[FakeNodes, MovePlan, str | MoveError]:
    plan = plan_move(registry, "bezalel", SPARE)
    nodes = FakeNodes(registry, fail)
    try:
        return nodes, plan, move.move(plan, lambda line: None, nodes)
    except MoveError as exc:
        return nodes, plan, exc


def record(registry: Registry) -> dict[str, Any]:
    (path,) = (registry.path.parent / "records").glob("*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_a_move_runs_its_steps_in_order(registry: Registry) -> None:
    nodes, plan, outcome = run(registry, set())
    assert isinstance(outcome, str)
    assert nodes.calls == [
        ("reachable", "192.0.2.20"), ("reachable", SPARE),
        ("deploy", SPARE, ("bezalel",)),  # the new server first, from the edited copy
        ("hand_over", "192.0.2.20"),  # then the old one stops and hands over
        ("carry", "192.0.2.20", SPARE, "20261207T000000.000000Z"),
        ("deploy", SPARE, ()),  # the registry written: every agent gets the new copy
        ("retire", "192.0.2.20", False)]
    assert registry.path.read_text() == plan.after == REGISTRY.replace(
        "host: 192.0.2.20   # moves", f"host: {SPARE}   # moves")
    assert not list(registry.path.parent.glob(".registry.yaml.move-*"))
    done = record(registry)
    assert (done["kind"], done["status"], done["move"]["from"], done["move"]["to"]) == (
        "move", "ok", "192.0.2.20", SPARE)


@pytest.mark.parametrize(("fail", "undo"), [
    ({"deploy-new"}, [("retire", SPARE, True)]),  # the old one never stopped
    ({"hand_over"}, [("retire", SPARE, True), ("resume", "192.0.2.20")]),
    ({"carry"}, [("retire", SPARE, True), ("resume", "192.0.2.20")]),
])
def test_a_new_server_that_never_gets_healthy_leaves_the_agent_on_the_old_one(
        registry: Registry, fail: set[str], undo: list[tuple[Any, ...]]) -> None:
    nodes, _, outcome = run(registry, fail)
    assert isinstance(outcome, MoveError)
    assert str(outcome).startswith("bezalel not moved: ")
    assert "; it runs on 192.0.2.20 as before, registry unchanged (record: " in str(outcome)
    step = next(index for index, call in enumerate(nodes.calls)
                if call[0] in {"deploy", "hand_over", "carry"} and (
                    call[0] in fail or (call[0] == "deploy" and "deploy-new" in fail)))
    assert nodes.calls[step + 1:] == undo
    assert registry.path.read_text() == REGISTRY
    assert record(registry)["status"] == "failed"


def test_an_old_server_that_cannot_start_again_is_said(registry: Registry) -> None:
    _, _, outcome = run(registry, {"carry", "resume"})
    assert isinstance(outcome, MoveError)
    assert ("and it could not be started again on 192.0.2.20: resume failed here"
            in str(outcome))
    assert outcome.hint and "systemctl start fleet-agent-bezalel" in outcome.hint


def test_a_failed_redeploy_leaves_the_agent_on_the_new_server(registry: Registry) -> None:
    nodes, plan, outcome = run(registry, {"redeploy"})
    assert isinstance(outcome, MoveError)
    assert str(outcome).startswith(f"bezalel runs on {SPARE} now, but the redeploy of the "
                                   "registry failed")
    assert registry.path.read_text() == plan.after
    assert "retire" not in [call[0] for call in nodes.calls]
    assert "resume" not in [call[0] for call in nodes.calls]


def test_an_unreachable_server_changes_nothing(registry: Registry) -> None:
    nodes, _, outcome = run(registry, {"reachable"})
    assert isinstance(outcome, MoveError)
    assert str(outcome).startswith("bezalel not moved, nothing changed: reachable failed here")
    assert nodes.calls == [("reachable", "192.0.2.20")]
    assert registry.path.read_text() == REGISTRY
    assert record(registry)["status"] == "failed"


def test_the_cli_shows_the_diff_and_writes_nothing_when_declined(registry: Registry) -> None:
    done = CliRunner().invoke(main, ["--registry", str(registry.path), "move", "bezalel",
                                     "--to", SPARE], input="n\n")
    assert done.exit_code == 1
    assert done.output.startswith("--- a/registry.yaml\n+++ b/registry.yaml\n")
    assert f"-    host: 192.0.2.20   # moves\n+    host: {SPARE}   # moves\n" in done.output
    assert done.output.endswith(f"Move bezalel from 192.0.2.20 to {SPARE} and write this "
                                "edit? [y/N]: n\nAborted!\n")
    assert registry.path.read_text() == REGISTRY
    assert not (registry.path.parent / "records").exists()


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """A node root for ``fleet-nodectl``: bezalel's state, snapshots, /etc/fleet and units
    (gateway and runtime); systemctl calls are noted, not run."""
    for name, path in (("STATE_ROOT", "state"), ("SNAPSHOTS", "snapshots"), ("ETC", "etc"),
                       ("UNIT_DIR", "units")):
        monkeypatch.setattr(nodectl, name, tmp_path / path)
    (tmp_path / "state" / "bezalel").mkdir(parents=True)
    (tmp_path / "state" / "bezalel" / "memory.txt").write_text("remembered\n")
    (tmp_path / "etc" / "bezalel").mkdir(parents=True)
    (tmp_path / "etc" / "bezalel" / "env").write_text('FLEET_BUS_PRIVATE_KEY="secret"\n')
    (tmp_path / "units").mkdir()
    for unit in ("fleet-agent-bezalel.service", "fleet-runtime-bezalel.service"):
        (tmp_path / "units" / unit).write_text("[Unit]\n")
    calls: list[tuple[str, ...]] = []

    def systemctl(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(tuple(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", systemctl)  # the module nodectl calls
    return calls


def test_hand_over_stops_the_runtime_then_the_gateway_then_snapshots(
        node: list[tuple[str, ...]], tmp_path: Path) -> None:
    done = nodectl.hand_over("bezalel", keep=5)
    assert node == [("systemctl", "stop", "fleet-runtime-bezalel.service"),
                    ("systemctl", "stop", "fleet-agent-bezalel.service")]
    copy = tmp_path / "snapshots" / "bezalel" / done["snapshot"]["id"] / "data" / "memory.txt"
    assert copy.read_text() == "remembered\n"


@pytest.mark.parametrize("purge", [False, True])
def test_retire_removes_units_and_secrets_and_keeps_state_unless_purged(
        node: list[tuple[str, ...]], tmp_path: Path, purge: bool) -> None:
    nodectl.take_snapshot("bezalel")
    done = nodectl.retire("bezalel", purge)
    assert node == [("systemctl", "disable", "--now", "fleet-runtime-bezalel.service"),
                    ("systemctl", "disable", "--now", "fleet-agent-bezalel.service"),
                    ("systemctl", "daemon-reload")]
    assert list((tmp_path / "units").iterdir()) == []
    assert not (tmp_path / "etc" / "bezalel").exists()  # its secrets go with the service
    kept = [str(tmp_path / "state" / "bezalel"), str(tmp_path / "snapshots" / "bezalel")]
    assert done["kept"] == ([] if purge else kept)
    assert all(Path(path).exists() != purge for path in kept)
