"""Autonomous work on lab nodes, as an operator runs it (issue 23's acceptance): a lab of its
own (the orchestrator and two workers, deployed by ``fleet deploy``), forge stand-ins for
Gitea, GitHub and GitLab and a real git server (``git http-backend``) on the controller's lab
address, and the workers' runtimes thinking with a scripted model there (deterministic tool
calls: read, fix, run the tests, done) or with the real lab model.

- One intake run (``fleet work run-now``) takes the three labelled issues, and the workers
  open three pull requests, each on its branch with the fix whose test passed in the node's
  sandbox, each issue commented with its link; a second intake opens nothing new.
- kill -9 of a worker's runtime after it opened a pull request and before it said so: the
  runtime restarts, resumes the item and still leaves one pull request.
- The real lab model: the loop runs to its bound and ends ``proposed`` or ``failed`` with the
  reason, and the agent wrote nothing outside its workspace (checked on the node).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import SECRETS, Fleet, own_lab
from tests.jsonhttp import WsgiLoopback
from tests.runtime.conftest import MockProvider
from tests.waiting import wait_for
from tests.work.forge_standin import ForgeState, create_app
from tests.work.git_server import GitServer
from tests.work.test_repo_loop import BUGGY, FIXED, TESTS, call, turn

pytestmark = [pytest.mark.lab, pytest.mark.slow]
ORCHESTRATOR, WORKERS = "ezra-primary", ("bezalel", "allegro")
TOKEN = "forge-token-0123456789abcdef"
FORGES = ("gitea", "github", "gitlab")
PREFIX = {"gitea": "/api/v1", "github": "", "gitlab": "/api/v4"}
STEPS = [call("read_file", path="calc.py"), call("write_file", path="calc.py", content=FIXED),
         call("run_tests")]
STORE_FILE = re.compile(r"[a-z][a-z0-9_.-]*\.(sqlite3(-wal|-shm|-journal)?|json|jsonl|lock)")
"""What the runtime and the gateway keep at the top of an agent's state dir."""


def fixer(body: dict[str, Any]) -> dict[str, Any] | None:
    """The scripted model: for a repository loop's request (it offers tools), the next step by
    how many tool results the conversation holds; else (a health round trip) the default."""
    if not body.get("tools"):
        return None
    done = sum(1 for message in body["messages"] if message.get("role") == "tool")
    return turn(STEPS[done]) if done < len(STEPS) else turn(text="add() now adds.")


@dataclasses.dataclass
class WorkLab:
    fleet: Fleet
    git: GitServer
    model: MockProvider
    forges: dict[str, ForgeState]
    data: dict[str, Any]
    """The registry as deployed."""
    lab_models: dict[str, Any]
    """The workers' lab-model providers (the scripted model replaced them)."""

    def run(self, *args: str) -> str:
        done = self.fleet.run(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def deploy(self, *args: str) -> None:
        self.fleet.registry.write_text(yaml.safe_dump(self.data, sort_keys=False))
        self.run("deploy", *args)

    def intake(self) -> None:
        self.run("work", "run-now", ORCHESTRATOR, "work-intake")

    def items(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.run("work", "list", "--json"))["items"]
        return found

    def settled(self, count: int, timeout: float = 300) -> list[dict[str, Any]]:
        """Intake runs (they read the workers' reports) until ``count`` items ended."""
        def ended() -> list[dict[str, Any]] | None:
            self.intake()
            found = [item for item in self.items() if item["state"] in ("proposed", "failed")]
            return found if len(found) >= count else None
        done: list[dict[str, Any]] = wait_for(ended, timeout, lambda: f"{count} items ended: "
                                              f"{self.items()}", every=3)
        return done

    def pulls(self) -> dict[str, list[str]]:
        return {kind: [pull.head for pull in state.pulls()]
                for kind, state in self.forges.items()}


@pytest.fixture(scope="module")
def work_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkLab]:
    base = tmp_path_factory.mktemp("work")
    with own_lab("work", base, with_model=True) as fleet:
        controller = fleet.controller()
        git = GitServer(base / "git", TOKEN, host=controller)
        model = MockProvider(host=controller)
        model.respond = fixer
        servers: list[WsgiLoopback] = []
        try:
            data = yaml.safe_load(fleet.registry.read_text())
            forges, sources = {}, []
            for kind in FORGES:
                repo = f"acme/{kind}-shop"
                forges[kind] = ForgeState(kind, repo=repo, token=TOKEN, web=git.url)
                forges[kind].add_issue(f"add() subtracts on {kind}", ["fleet", "bug"])
                servers.append(WsgiLoopback(create_app(kind, forges[kind]), host=controller))
                sources.append({"forge": kind, "api_url": servers[-1].address + PREFIX[kind],
                                "git_url": git.create(repo, {"calc.py": BUGGY,
                                                             "test_calc.py": TESTS}),
                                "repo": repo, "label": "fleet", "token": f"{kind.upper()}_TOKEN",
                                "capability_labels": {"bug": "code", "docs": "review"}})
            data["work"] = {"test_command": ["python3", "test_calc.py"], "max_steps": 6,
                            "max_minutes": 3, "sources": sources}
            for name in WORKERS:
                agent = data["wizards"][name]
                agent["capabilities"] = ["code", "review"] if name == "bezalel" else ["code"]
                agent["lab_model"] = agent.get("provider")  # kept for the real model's run
                agent["provider"] = {"name": "scripted", "base_url": model.url,
                                     "api_key": "MOCK_API_KEY"}
            secrets = json.loads(json.dumps(SECRETS))
            secrets["fleet"].update({f"{kind.upper()}_TOKEN": TOKEN for kind in FORGES})
            for name in WORKERS:
                secrets["agents"][name]["MOCK_API_KEY"] = model.key
            Path(fleet.env["FLEET_SECRETS"]).write_text(json.dumps(secrets))
            lab_models = {name: data["wizards"][name].pop("lab_model") for name in WORKERS}
            lab = WorkLab(fleet, git, model, forges, data, lab_models)
            lab.deploy()
            yield lab
        finally:
            for server in servers:
                server.close()
            model.close()
            git.close()


def test_one_intake_opens_a_tested_pull_request_per_issue_and_a_second_opens_none(
        work_lab: WorkLab) -> None:
    work_lab.intake()
    proposed = work_lab.settled(3)
    assert sorted((item["forge"], item["state"]) for item in proposed) == [
        ("gitea", "proposed"), ("github", "proposed"), ("gitlab", "proposed")], proposed
    assert {item["assignee"] for item in proposed} <= set(WORKERS)
    assert work_lab.pulls() == {kind: ["fleet/ISSUE-1"] for kind in FORGES}
    for kind, state in work_lab.forges.items():
        item = next(item for item in proposed if item["forge"] == kind)
        assert state.comments == [{"issue": 1, "body": "A pull request for this issue: "
                                                       f"{item['pr_url']}"}]
        assert work_lab.git.show(f"acme/{kind}-shop", "fleet/ISSUE-1", "calc.py") == FIXED
        assert work_lab.git.show(f"acme/{kind}-shop", "main", "calc.py") == BUGGY
        assert sorted(work_lab.git.files(f"acme/{kind}-shop", "fleet/ISSUE-1")) == [
            "calc.py", "test_calc.py"]
        assert state.schema_errors == []
        shown = json.loads(work_lab.run("work", "show", item["id"], "--json"))
        tests = [event["detail"] for event in shown["timeline"] if event["kind"] == "test"]
        assert tests and all(test["passed"] for test in tests), tests  # in the sandbox
    for name in {item["assignee"] for item in proposed}:
        runs = [json.loads(line) for line in work_lab.fleet.ssh(
            name, f"cat /var/lib/fleet/{name}/sandbox-runs.jsonl").splitlines()]
        assert runs and {run["status"] for run in runs} == {"passed"}, runs
        assert {run["network"] for run in runs} == {"none"}  # nspawn: no address filter

    work_lab.intake()
    work_lab.intake()
    assert len(work_lab.items()) == 3
    assert work_lab.pulls() == {kind: ["fleet/ISSUE-1"] for kind in FORGES}
    assert all(len(state.comments) == 1 for state in work_lab.forges.values())


def test_a_runtime_killed_after_opening_its_pull_request_resumes_and_leaves_one(
        work_lab: WorkLab) -> None:
    gitea = work_lab.forges["gitea"]
    issue = gitea.add_issue("add() still subtracts", ["fleet", "bug"])
    gitea.hold_comments = threading.Event()  # the pull request is open, its comment waits
    gitea.comment_waiting.clear()
    try:
        work_lab.intake()
        wait_for(gitea.comment_waiting.is_set, 180, "the worker to comment on the issue",
                 every=0.2)
        (item,) = [item for item in work_lab.items() if item["issue"] == issue.number]
        worker = item["assignee"]
        assert item["state"] == "working" and worker in WORKERS
        pid = work_lab.fleet.ssh(worker, f"systemctl show -p MainPID --value "
                                         f"fleet-runtime-{worker}.service").strip()
        work_lab.fleet.ssh(worker, f"systemctl kill -s KILL fleet-runtime-{worker}.service")
    finally:
        held, gitea.hold_comments = gitea.hold_comments, None
        held.set()  # the killed runtime's comment: its connection is gone, the forge has it
    wait_for(lambda: work_lab.fleet.ssh(worker, f"systemctl show -p MainPID --value "
                                                f"fleet-runtime-{worker}.service").strip()
             not in ("0", pid), 60, "the runtime to be restarted")
    ended = wait_for(lambda: next((found for found in work_lab.settled(4) if found["id"] ==
                                   item["id"]), None), 300, "the resumed item to end")
    assert (ended["state"], ended["assignee"], ended["attempts"]) == ("proposed", worker, 1)
    heads = [pull.head for pull in gitea.pulls()]
    assert heads.count(f"fleet/ISSUE-{issue.number}") == 1, heads
    assert [found["body"] for found in gitea.comments if found["issue"] == issue.number] == [
        f"A pull request for this issue: {ended['pr_url']}"]  # the killed one's, not repeated
    kinds = [event["kind"] for event in json.loads(
        work_lab.run("work", "show", item["id"], "--json"))["timeline"]]
    assert kinds.count("resumed") == 1 and kinds[-1] == "proposed", kinds
    assert work_lab.fleet.ssh(worker, f"test -e /var/lib/fleet/{worker}/work-current.json "
                                      "&& echo kept || echo gone").strip() == "gone"


def test_the_real_lab_model_ends_within_its_bound_and_writes_only_its_workspace(
        work_lab: WorkLab) -> None:
    agent, state_dir = "bezalel", "/var/lib/fleet/bezalel"
    work_lab.data["wizards"][agent]["provider"] = work_lab.lab_models[agent]
    work_lab.data["work"].update({"max_steps": 4, "max_minutes": 2})
    work_lab.deploy()
    marker = "/run/fleet-work-lab.marker"
    work_lab.fleet.ssh(agent, f"touch {marker}")
    issue = work_lab.forges["github"].add_issue("Document add()", ["fleet", "docs"])
    work_lab.intake()
    ended = wait_for(lambda: next((item for item in work_lab.settled(5, timeout=420)
                                   if item["issue"] == issue.number
                                   and item["forge"] == "github"), None), 420,
                     "the real model's item to end")
    assert ended["assignee"] == agent  # the only worker with `review` (docs)
    assert ended["state"] in ("proposed", "failed"), ended
    assert ended["state"] == "proposed" or ended["reason"], ended
    changed = work_lab.fleet.ssh(agent, f"find / -xdev -newer {marker} -type f -user {agent} "
                                        f"-not -path '{state_dir}/*' -print").split()
    assert changed == [], changed  # nothing of the agent's outside its state dir
    inside = work_lab.fleet.ssh(agent, f"cd {state_dir} && find . -newer {marker} -type f "
                                       "-not -path './work/*' -not -path './work-git/*' "
                                       "-print").split()
    assert all(STORE_FILE.fullmatch(path.removeprefix("./")) for path in inside), inside
