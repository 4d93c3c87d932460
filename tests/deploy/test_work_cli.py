"""``fleet work run-now AGENT SCHEDULE``: exact output, the command reaching the node (the
schedule's service started as root over the deploy's SSH), one line with a hint otherwise;
``fleet work list|show|retry|cancel``: exact output against the orchestrator's gateway."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fleet.cli import main
from fleet.control import schedules
from fleet.core.registry import load_registry
from fleet.node.work import items
from tests.bus.conftest import write_operator_secrets
from tests.bus.conftest import write_registry as bus_registry
from tests.work.items_gateway import failed, gateway_app, issue, proposed, serving

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


def test_run_now_runs_the_orchestrators_work_intake(tmp_path: Path, node: Node) -> None:
    """Found by the work lab test: ``fleet work run-now ORCHESTRATOR work-intake`` said the
    orchestrator had no such schedule, though the deploy installs it (one list now:
    :meth:`~fleet.core.registry.Registry.schedules_of`)."""
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY + """work:
  test_command: [make, test]
  intake_on: "*:0/5"
  sources:
    - {forge: gitea, api_url: "http://192.0.2.5:3000/api/v1", repo: acme/shop, label: fleet,
       git_url: "http://192.0.2.5:3000/acme/shop.git", token: GITEA_TOKEN}
""")
    assert fleet(path, "work", "run-now", "ezra", "work-intake") == (
        0, "ezra: work intake ran (fleet-schedule-ezra_work-intake.service): the forges' "
           "issues are taken in and queued items routed (`fleet work list`)\n", "")
    assert node.ran == [["systemctl", "start", "fleet-schedule-ezra_work-intake.service"]]
    code, _, said = fleet(path, "work", "run-now", "bezalel", "work-intake")
    assert code == 1 and said.startswith(
        "Error: agent 'bezalel' has no schedule named 'work-intake' (its schedules: none)")


def test_run_now_waits_for_the_intake_as_long_as_its_unit_may_run(
        tmp_path: Path, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside attack r37: run-now gave every schedule the 180 s of a prompt's unit, while
    work intake's may run 900 s (forges paged, each worker asked): a slow intake was reported
    failed while it went on. Here a prompt's bound is cut to 0.2 s and the node takes 1 s."""
    from deploys.schedules import INTAKE_TIMEOUT_S, TIMEOUT_S

    assert schedules.RUN_TIMEOUT > TIMEOUT_S and schedules.INTAKE_RUN_TIMEOUT > INTAKE_TIMEOUT_S
    monkeypatch.setattr(schedules, "RUN_TIMEOUT", 0.2)
    node.answer = "sleep 1"
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY + """work:
  test_command: [make, test]
  sources:
    - {forge: gitea, api_url: "http://192.0.2.5:3000/api/v1", repo: acme/shop, label: fleet,
       git_url: "http://192.0.2.5:3000/acme/shop.git", token: GITEA_TOKEN}
""")
    assert fleet(path, "work", "run-now", "ezra", "work-intake")[0] == 0
    code, _, said = fleet(path, "work", "run-now", "ezra", "nightly")
    assert code == 1 and said.startswith(
        "Error: ezra: fleet-schedule-ezra_nightly.service did not finish within 0 s")


def test_an_orchestrators_schedule_named_like_the_intake_is_refused(tmp_path: Path) -> None:
    """Outside attack r37: with a work: section, the orchestrator's own `work-intake` schedule
    passed validate; the deploy's list then held two schedules of that name, written to the
    same unit files, and run-now said a prompt was queued while it started the intake."""
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY.replace("      nightly:", "      work-intake:") + """work:
  test_command: [make, test]
  sources:
    - {forge: gitea, api_url: "http://192.0.2.5:3000/api/v1", repo: acme/shop, label: fleet,
       git_url: "http://192.0.2.5:3000/acme/shop.git", token: GITEA_TOKEN}
""")
    code, _, said = fleet(path, "registry", "validate", str(path))
    assert code == 1 and said.splitlines()[0] == (
        f"Error: {path}:10: wizards.ezra.schedules.work-intake: the name is the work "
        "intake's, which the orchestrator runs while the registry has a work: section; rename "
        "this schedule (work.intake_on sets the intake's calendar)")
    path.write_text(REGISTRY.replace("      nightly:", "      work-intake:"))
    assert fleet(path, "registry", "validate", str(path))[0] == 0  # no work: the name is free


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


# fleet work list|show|retry|cancel: the orchestrator's work items through its gateway


@pytest.fixture
def work_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """ezra's gateway (the orchestrator) served on loopback with its real work store, and
    the operator's key in $FLEET_SECRETS: (registry, ezra's state dir)."""
    registry = bus_registry(tmp_path)
    monkeypatch.setenv("FLEET_SECRETS", str(write_operator_secrets(tmp_path)))
    state = tmp_path / "state"
    app = gateway_app(registry, state)
    with serving(app, load_registry(registry).get("ezra").gateway_port):
        yield registry, state


def work(registry: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--registry", str(registry), "work", *args], input=stdin)


def test_work_list_of_no_items(work_fleet: tuple[Path, Path]) -> None:
    registry, _ = work_fleet
    assert work(registry, "list").output == "No work items.\n"
    assert work(registry, "list", "--state", "failed").output == "No failed work items.\n"


def test_work_list_shows_state_issue_assignee_pr_and_reason(
        work_fleet: tuple[Path, Path]) -> None:
    registry, state = work_fleet
    queued, broken, open_pr = issue(state, 1), failed(state, 2), proposed(state, 3)
    listed = work(registry, "list")
    assert listed.exit_code == 0, listed.output
    assert listed.output == (
        f"{open_pr}  proposed  acme/shop#3 (gitea)  bezalel  Fix the parser\n"
        "    pull request http://192.0.2.5:3000/acme/shop/pulls/103\n"
        f"{broken}  failed    acme/shop#2 (gitea)  bezalel  Fix the parser\n"
        "    reason: tests still fail after 20 steps\n"
        f"{queued}  queued    acme/shop#1 (gitea)  -  Fix the parser\n"
        "3 work item(s): 1 queued, 0 working, 1 proposed, 1 failed, 0 closed\n")
    paged = work(registry, "list", "--limit", "1", "--state", "failed")
    assert paged.output == (
        f"{broken}  failed    acme/shop#2 (gitea)  bezalel  Fix the parser\n"
        "    reason: tests still fail after 20 steps\n"
        "3 work item(s): 1 queued, 0 working, 1 proposed, 1 failed, 0 closed\n")
    first = work(registry, "list", "--limit", "2")
    assert first.output.splitlines()[-1] == f"More: fleet work list --after {broken}"


def test_work_show_prints_the_timeline(work_fleet: tuple[Path, Path]) -> None:
    registry, state = work_fleet
    item_id = proposed(state, 3)
    shown = work(registry, "show", item_id)
    assert shown.exit_code == 0, shown.output
    assert shown.output == f"""\
{item_id}  proposed  attempt(s) 1
issue     acme/shop#3 (gitea) http://192.0.2.5:3000/acme/shop/issues/3
title     Fix the parser
assignee  bezalel (capability code)
branch    fleet/ISSUE-3
pull      http://192.0.2.5:3000/acme/shop/pulls/103
reason    -
created   2027-01-15T08:00:03.000Z, updated 2027-01-15T08:02:00.000Z
timeline
  2027-01-15T08:00:03.000Z  intake    {{"forge": "gitea", "issue": 3, "repo": "acme/shop", \
"url": "http://192.0.2.5:3000/acme/shop/issues/3"}}
  2027-01-15T08:01:40.000Z  routed    {{"assignee": "bezalel", "attempt": 1}}
  2027-01-15T08:01:50.000Z  turn      {{"step": 1, "tool_calls": 1}}
  2027-01-15T08:01:50.000Z  tool      {{"path": "shop/parser.py", "tool": "write_file"}}
  2027-01-15T08:01:50.000Z  test      {{"exit": 0, "failed": 0, "passed": 12}}
  2027-01-15T08:01:50.000Z  pushed    {{"branch": "fleet/ISSUE-3", "commits": 1}}
  2027-01-15T08:02:00.000Z  proposed  {{"pr_url": "http://192.0.2.5:3000/acme/shop/pulls/103"}}
"""


def test_a_node_s_words_reach_the_terminal_escaped(work_fleet: tuple[Path, Path]) -> None:
    registry, state = work_fleet
    item_id = failed(state, 4)
    with items.connect(state) as db:  # what a node could say: the store never keeps it so
        db.execute("UPDATE items SET reason = 'bad \x1b[2J evil', assignee = 'a\nb'")
    listed = work(registry, "list")
    assert f"{item_id}  failed    acme/shop#4 (gitea)  a\\nb  Fix the parser\n" \
           "    reason: bad \\x1b[2J evil\n" in listed.output
    assert "\x1b" not in work(registry, "show", item_id).output


def test_work_retry_and_cancel_and_their_refusals(work_fleet: tuple[Path, Path]) -> None:
    registry, state = work_fleet
    broken, open_pr = failed(state, 2), proposed(state, 3)
    retried = work(registry, "retry", broken)
    assert (retried.exit_code, retried.output) == (0, (
        f"{broken}: queued again (attempt 2 next); the orchestrator routes it to a worker.\n"))
    again = work(registry, "retry", broken)
    assert (again.exit_code, again.output) == (1, (
        f"Error: POST /work/{broken}/retry: HTTP 409: {broken} is queued: only a failed item "
        "is retried; it is queued already\nHint: See `fleet work show ID`.\n"))
    refused = work(registry, "cancel", open_pr, "--yes")
    assert (refused.exit_code, refused.output) == (1, (
        f"Error: POST /work/{open_pr}/cancel: HTTP 409: {open_pr} is proposed: it cannot be "
        "cancelled; its pull request is open (http://192.0.2.5:3000/acme/shop/pulls/103): "
        "close it on the forge\nHint: See `fleet work show ID`.\n"))
    cancelled = work(registry, "cancel", broken, stdin="y\n")
    assert cancelled.output == ("Cancel this work item for good? [y/N]: y\n"
                                f"{broken}: closed (cancelled by the operator).\n")
    missing = work(registry, "show", "w-000000000000")
    assert (missing.exit_code, missing.output) == (1, (
        "Error: GET /work/w-000000000000: HTTP 404: no work item w-000000000000\n"
        "Hint: See `fleet work list`.\n"))


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_work_ids_are_checked_before_anything_is_sent(tmp_path: Path, command: str) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)  # unreachable hosts: nothing may be sent
    found = work(path, command, "w-XYZ\x1b[2J", *(["--yes"] if command == "cancel" else []))
    assert found.exit_code == 2
    assert found.output.splitlines()[-1] == (
        "Error: Invalid value for 'ID': 'w-XYZ\\x1b[2J' is not a work item id: 'w-' and 12 "
        "lowercase hex digits (as `fleet work list` shows them)")


def test_work_commands_need_the_operator_key(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "secrets.yaml"
    empty.touch(mode=0o600)
    empty.write_text("identities: {}\n")
    monkeypatch.setenv("FLEET_SECRETS", str(empty))
    found = work(bus_registry(tmp_path), "list")
    assert (found.exit_code, found.output) == (1, (
        "Error: fleet work needs the operator's key, and $FLEET_SECRETS has none\n"
        "Hint: Add identities.operator to the secrets file (`fleet keys` makes one).\n"))


GOOD_ITEM = {"id": "w-0123456789ab", "forge": "gitea", "repo": "acme/shop", "issue": 4,
             "issue_url": "http://192.0.2.5:3000/acme/shop/issues/4", "title": "Fix",
             "capability": None, "assignee": None, "state": "failed", "branch": "fleet/ISSUE-4",
             "pr_url": None, "reason": "tests fail", "attempts": 1, "version": 3,
             "events_dropped": 0, "created": "2026-12-07T00:00:00.000Z",
             "updated": "2026-12-07T00:00:00.000Z"}
HOSTILE_ITEMS = [
    ({"id": "w-0123456789ab\x1b]0;pwned\x07"}, "an item's id is not a work item id"),
    ({"state": "failed\x1b[2J\n$ rm -rf /"}, "item w-0123456789ab: its state is not one of"),
    ({"title": 5}, "item w-0123456789ab: title is not a string"),
    ({"attempts": "1\x1b[2J"}, "item w-0123456789ab: attempts is not a whole number"),
    ({"events_dropped": True}, "item w-0123456789ab: events_dropped is not a whole number"),
    ({"pr_url": ["x"]}, "item w-0123456789ab: pr_url is not a string or null"),
]


@pytest.mark.parametrize(("change", "problem"), HOSTILE_ITEMS)
@pytest.mark.parametrize("command", ["list", "show", "retry", "cancel"])
def test_a_hostile_orchestrators_answer_is_one_line_and_moves_no_terminal(
        registry: Path, monkeypatch: pytest.MonkeyPatch, command: str,
        change: dict[str, Any], problem: str) -> None:
    """Outside attack r36 (F3): ids, states and numbers from the node reached the terminal
    unescaped (a title escape, a screen clear, a fake prompt line), and a title of the wrong
    type was a traceback. The answer is checked against the API's shape first."""
    from fleet.control import work as control

    item = {**GOOD_ITEM, **change}
    answers = {"list": {"items": [item], "next": None, "counts": {"failed": 1}},
               "show": {"item": item, "timeline": []}, "retry": {"item": item},
               "cancel": {"item": item}}
    monkeypatch.setattr(control, "work_client", lambda registry: pytest.fail("no call"))
    monkeypatch.setattr(control, "call", lambda *args, **kw: answers[command])
    args = [command] if command == "list" else [command, GOOD_ITEM["id"]]
    done = work(registry, *args, *(["--yes"] if command == "cancel" else []))
    assert done.exit_code == 1, done.output
    assert done.output.startswith("Error: the orchestrator's answer is not a work API answer: "
                                  f"{problem}"), done.output
    assert done.output.count("\n") == 2 and "\x1b" not in done.output
    assert "Hint: Is the orchestrator on this release?" in done.output


@pytest.mark.parametrize("answer", [
    {"items": [], "next": None, "counts": {"queued": "lots"}},
    {"items": [], "next": None, "counts": []},
    {"items": 5, "next": None, "counts": {}},
    {"items": [{"id": "w-0123456789ab"}], "next": None, "counts": {}},
    {"items": [], "next": "../../etc", "counts": {}},
])
def test_a_hostile_orchestrator_costs_the_dashboard_only_its_work_section(
        registry: Path, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any]) -> None:
    """Outside attack r36 (F4): a malformed work list made the whole dashboard a 500."""
    from fleet.control import work as control
    from fleet.core.registry import load_registry
    from fleet.dashboard.data import work_board

    monkeypatch.setattr(control, "call", lambda *args, **kw: answer)
    board = work_board(load_registry(registry))
    assert board.items == () and (board.problem or "").startswith(
        "the orchestrator's answer is not a work API answer: ")
