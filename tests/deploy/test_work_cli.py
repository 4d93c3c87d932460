"""``fleet work run-now AGENT SCHEDULE``: exact output, the command reaching the node (the
schedule's service started as root over the deploy's SSH), one line with a hint otherwise."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control import schedules

REGISTRY = """\
fleet:
  become: sudo
wizards:
  ezra:
    host: 192.0.2.10
    role: orchestrator
    model: m
    provider: {base_url: "http://192.0.2.1:8650/v1", api_key: K}
    schedules:
      nightly: {on: "*-*-* 02:00:00", prompt: "Review the open issues."}
      triage: {on: "Mon..Fri *-*-* 09:00", prompt: "Triage.", capability: code}
  bezalel:
    host: 192.0.2.20
    role: worker
    model: m
    ssh_user: deploy
    capabilities: [code]
"""


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return path


class Node:
    """What the controller would run over SSH (``ran``), answered by the shell command
    ``answer`` run here instead (default: success)."""

    def __init__(self) -> None:
        self.ran: list[list[str]] = []
        self.answer = "true"

    def as_root(self, agent: object, registry: object, argv: list[str],
                timeout: float) -> list[str]:
        self.ran.append(argv)
        return ["sh", "-c", self.answer]


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Node:
    found = Node()
    monkeypatch.setattr(schedules, "as_root", found.as_root)
    return found


def fleet(registry: Path, *args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(main, ["--registry", str(registry), *args])
    return done.exit_code, done.stdout, done.stderr


def test_run_now_starts_the_schedules_service_and_says_so(registry: Path,
                                                          node: Node) -> None:
    assert fleet(registry, "work", "run-now", "ezra", "nightly") == (
        0, "ezra: schedule nightly ran (fleet-schedule-ezra_nightly.service): its request is "
           "queued for ezra's inbox\n", "")
    assert fleet(registry, "work", "run-now", "ezra", "triage") == (
        0, "ezra: schedule triage ran (fleet-schedule-ezra_triage.service): its request is "
           "queued for ezra's inbox, routed by capability code\n", "")
    assert node.ran == [["systemctl", "start", "fleet-schedule-ezra_nightly.service"],
                    ["systemctl", "start", "fleet-schedule-ezra_triage.service"]]


def test_run_now_runs_as_root_through_sudo_for_a_non_root_login(registry: Path) -> None:
    from fleet.core.registry import load_registry

    loaded = load_registry(registry)
    argv = schedules.as_root(loaded.get("bezalel"), loaded, ["systemctl", "start", "u x"], 2.0)
    assert argv[0] == "ssh" and "StrictHostKeyChecking=yes" in argv
    assert argv[-1] == "sudo -n systemctl start 'u x'"
    assert schedules.as_root(loaded.get("ezra"), loaded, ["systemctl", "start", "u"],
                             2.0)[-1] == "systemctl start u"


def test_an_unknown_agent_or_schedule_is_one_line_with_a_hint(registry: Path,
                                                             node: Node) -> None:
    assert fleet(registry, "work", "run-now", "nobody", "nightly") == (
        1, "", f"Error: {registry}: no agent named 'nobody' (agents: ezra, bezalel)\n"
               "Hint: Use one of the agent names listed by `fleet registry show`.\n")
    assert fleet(registry, "work", "run-now", "ezra", "weekly") == (
        1, "", "Error: agent 'ezra' has no schedule named 'weekly' (its schedules: nightly, "
               "triage)\nHint: Name one of ezra's schedules (`fleet registry show --json`), or "
               "add it under wizards.ezra.schedules and deploy.\n")
    assert fleet(registry, "work", "run-now", "bezalel", "nightly") == (
        1, "", "Error: agent 'bezalel' has no schedule named 'nightly' (its schedules: none)\n"
               "Hint: Name one of bezalel's schedules (`fleet registry show --json`), or add "
               "it under wizards.bezalel.schedules and deploy.\n")
    assert node.ran == []


def test_a_schedule_not_deployed_yet_says_to_deploy(registry: Path,
                                                    node: Node) -> None:
    unit = "fleet-schedule-ezra_nightly.service"
    node.answer = shlex.join(["sh", "-c", f"echo 'Failed to start {unit}: Unit {unit} not "
                              "found.' >&2; exit 5"])
    assert fleet(registry, "work", "run-now", "ezra", "nightly") == (
        1, "", f"Error: ezra: systemctl start {unit} failed: Failed to start {unit}: Unit "
               f"{unit} not found.\nHint: Deploy the schedule first (`fleet deploy --limit "
               "ezra`).\n")
    node.answer = "echo 'Job failed.' >&2; exit 1"
    assert fleet(registry, "work", "run-now", "ezra", "nightly") == (
        1, "", f"Error: ezra: systemctl start {unit} failed: Job failed.\nHint: See "
               f"`journalctl -u {unit}` on the node, and `fleet status`.\n")
