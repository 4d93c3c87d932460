"""The whole work loop on loopback: forge stand-ins (Gitea, GitHub, GitLab), a real git server,
real gateways, the workers' runtimes as their unit builds them (:mod:`fleet.node.agent`) with
scripted models, and intake runs of the orchestrator (:mod:`fleet.node.work.intake`). The
sandbox is replaced by a local runner (the sandbox has tests of its own)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet.core.registry import load_registry
from fleet.node.agent import from_env
from fleet.node.provider import Provider
from fleet.node.runtime.loop import Runtime
from fleet.node.work import items
from fleet.node.work.intake import GRACE_S, Intake
from fleet.node.work.messages import EVENT, ITEM, ItemOrder
from fleet.node.work.worker import CURRENT_FILE, MAX_RESUMES, Worker, WorkerStopped
from tests.bus.conftest import FAST_RETRIES, KEYS, Gateway, free_port
from tests.runtime.conftest import MockProvider
from tests.waiting import wait_for
from tests.work.forge_standin import ForgeState, create_app, serve
from tests.work.git_server import GitServer
from tests.work.test_repo_loop import BUGGY, FIX_SCRIPT, TESTS, local_tests, turn

TOKEN = "forge-token-0123456789abcdef"
FORGES = ("gitea", "github", "gitlab")
PREFIX = {"gitea": "/api/v1", "github": "", "gitlab": "/api/v4"}
WORKERS = ("bezalel", "allegro", "ghost")


class WorkFleet:
    """Three forges with one labelled issue each, their repositories, the gateways of an
    orchestrator (ezra) and three workers, and the workers' runtimes."""

    def __init__(self, folder: Path, stack: ExitStack, probe: MockProvider) -> None:
        self.folder, self.stack, self.probe = folder, stack, probe
        self.git = GitServer(folder / "git", TOKEN)
        stack.callback(self.git.close)
        self.forges: dict[str, ForgeState] = {}
        sources = []
        for kind in FORGES:
            repo = f"acme/{kind}-shop"
            state = ForgeState(kind, repo=repo, token=TOKEN, web=self.git.url)
            state.add_issue(f"add() subtracts on {kind}", ["fleet", "bug"])
            base = stack.enter_context(serve(create_app(kind, state)))
            self.forges[kind] = state
            sources.append({"forge": kind, "api_url": f"{base}{PREFIX[kind]}",
                            "git_url": self.git.create(repo, {"calc.py": BUGGY,
                                                              "test_calc.py": TESTS}),
                            "repo": repo, "label": "fleet", "token": f"{kind.upper()}_TOKEN",
                            "capability_labels": {"bug": "code"}})
        agents: dict[str, Any] = {"ezra": {"host": "127.0.0.1", "role": "orchestrator",
                                           "model": "test/m", "gateway_port": free_port()}}
        for name in WORKERS:
            agents[name] = {"host": "127.0.0.1", "role": "worker", "model": "test/m",
                            "gateway_port": free_port(), "capabilities": ["code"],
                            "provider": {"base_url": probe.url, "api_key": "MOCK_API_KEY"}}
        self.registry = folder / "registry.yaml"
        self.registry.write_text(yaml.safe_dump({"wizards": agents, "work": {
            "test_command": ["python3", "test_calc.py"], "max_steps": 10, "max_minutes": 5,
            "sources": sources}}, sort_keys=False))
        (folder / "souls").mkdir()
        self.gateways = {}
        for name in agents:
            (folder / "souls" / f"{name}.md").write_text(f"You are {name}.\n")
            config = folder / f"config-{name}.json"
            config.write_text("{}\n")
            self.gateways[name] = Gateway(name, self.registry, folder / f"state-{name}",
                                          {**FAST_RETRIES, "FLEET_CONFIG": str(config),
                                           "FLEET_SOUL": str(folder / "souls" / f"{name}.md")})
        for gateway in self.gateways.values():
            gateway.start()
            stack.callback(gateway.stop)
        self.runtimes: dict[str, Runtime] = {}
        self.models: dict[str, MockProvider] = {}
        self.ezra = stack.enter_context(self.gateways["ezra"].client(timeout=30))

    def env(self, name: str) -> dict[str, str]:
        """What the agent's unit gives it: its identity, the model key and the forge tokens
        (the deploy leaves those out for agents the work does not need)."""
        return {"FLEET_REGISTRY": str(self.registry), "FLEET_AGENT": name,
                PRIVATE_KEY_ENV: KEYS[name], "FLEET_STATE_DIR": str(self.gateways[name].state),
                "FLEET_SOUL": str(self.folder / "souls" / f"{name}.md"),
                "MOCK_API_KEY": self.probe.key,
                **{f"{kind.upper()}_TOKEN": TOKEN for kind in FORGES}}

    def start_worker(self, name: str, script: list[dict[str, Any]]) -> Runtime:
        """``name``'s runtime as its unit builds it, thinking about work with a model of its
        own answering ``script`` and running tests locally."""
        runtime = from_env(self.env(name))
        model = MockProvider()
        self.stack.callback(model.close)
        model.script = list(script)
        self.worker(runtime).provider = Provider(model.url, model.key, "test/m", timeout=30)
        self.worker(runtime).run_tests = local_tests
        runtime.status["started"] = time.time() - 60  # past /health's stability window
        threading.Thread(target=runtime.run, daemon=True).start()
        self.stack.callback(runtime.stop.set)
        wait_for(lambda: runtime.status["state"] == "ready", 20, f"{name} to be ready")
        self.runtimes[name], self.models[name] = runtime, model
        return runtime

    @staticmethod
    def worker(runtime: Runtime) -> Worker:
        worker = runtime.handlers[ITEM].__self__  # type: ignore[attr-defined]
        assert isinstance(worker, Worker)
        return worker

    def intake(self, **options: Any) -> Intake:
        return Intake(load_registry(self.registry), "ezra", self.gateways["ezra"].state,
                      self.ezra, self.env("ezra"), **options)

    def items(self) -> list[items.WorkItem]:
        return items.listing(self.gateways["ezra"].state)["items"]

    def settled(self, state: str, count: int = 3) -> list[items.WorkItem]:
        """Intake runs until ``count`` items are in ``state`` (the workers' outcomes are read
        by each run); the items then."""
        def done() -> list[items.WorkItem] | None:
            self.intake().record_messages()
            found = [item for item in self.items() if item["state"] == state]
            return found if len(found) == count else None
        found: list[items.WorkItem] = wait_for(
            done, 120, lambda: f"{count} items {state}: {self.items()}", every=0.5)
        return found

    def pulls(self) -> dict[str, int]:
        return {kind: len(state.pulls()) for kind, state in self.forges.items()}


@pytest.fixture
def work_fleet(tmp_path: Path, provider: MockProvider) -> Iterator[WorkFleet]:
    with ExitStack() as stack:
        yield WorkFleet(tmp_path, stack, provider)


def test_one_intake_run_proposes_a_tested_pull_request_per_issue_and_a_second_adds_none(
        work_fleet: WorkFleet) -> None:
    for name in WORKERS:
        work_fleet.start_worker(name, FIX_SCRIPT)
    report = work_fleet.intake().run()
    assert report.problems == [] and report.taken == 3 and len(report.routed) == 3
    assert sorted(item["assignee"] or "" for item in work_fleet.items()) == sorted(WORKERS)
    proposed = work_fleet.settled("proposed")
    assert work_fleet.pulls() == {"gitea": 1, "github": 1, "gitlab": 1}
    for kind, state in work_fleet.forges.items():
        (pull,) = state.pulls()
        item = next(item for item in proposed if item["forge"] == kind)
        assert (pull.head, pull.base, pull.state) == ("fleet/ISSUE-1", "main", "open")
        assert item["pr_url"] and item["pr_url"].endswith(f"/{pull.number}")
        assert state.comments == [{"issue": 1, "body": "A pull request for this issue: "
                                                       f"{item['pr_url']}"}]
        branch = work_fleet.git.show(f"acme/{kind}-shop", "fleet/ISSUE-1", "calc.py")
        assert "return a + b" in branch  # the fix whose test passed
        assert work_fleet.git.branches(f"acme/{kind}-shop")["main"]  # main untouched below
        assert "return a - b" in work_fleet.git.show(f"acme/{kind}-shop", "main", "calc.py")
        assert state.schema_errors == []
        kinds = [event["kind"] for event in items.timeline(work_fleet.gateways["ezra"].state,
                                                           item["id"])]
        assert kinds[:2] == ["intake", "routed"] and kinds[-1] == "proposed"
        assert {"turn", "tool", "test", "pushed"} <= set(kinds)

    again = work_fleet.intake().run()
    assert (again.taken, again.routed, again.closed, again.resumed) == (3, [], [], [])
    assert work_fleet.pulls() == {"gitea": 1, "github": 1, "gitlab": 1}
    assert all(len(state.comments) == 1 for state in work_fleet.forges.values())

    work_fleet.forges["gitea"].pulls()[0].state = "merged"  # a person merged it
    work_fleet.forges["github"].items[0].state = "closed"  # a person closed the issue
    ended = work_fleet.intake().run()
    states = {item["forge"]: (item["state"], item["reason"]) for item in work_fleet.items()}
    assert len(ended.closed) == 2 and states == {
        "gitea": ("closed", "its pull request was merged on the forge"),
        "github": ("closed", "its issue was closed on the forge"),
        "gitlab": ("proposed", None)}


class Killer:
    """A worker's bus client that kills its worker (as kill -9 would: no outcome, nothing more
    sent) just before it reports the pull request it opened."""

    def __init__(self, client: BusClient, runtime: Runtime) -> None:
        self.client, self.runtime = client, runtime
        self.killed = threading.Event()

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]:
        if type == EVENT and payload["kind"] == "proposed":
            self.runtime.stop.set()
            self.killed.set()
            raise WorkerStopped("killed")
        return self.client.send(to, type, payload, retries, **options)


def kill_after_its_pull_request(work_fleet: WorkFleet) -> None:
    """One issue (on Gitea), routed to bezalel, whose runtime is killed as it is about to
    report the pull request it opened."""
    for kind in ("github", "gitlab"):
        work_fleet.forges[kind].items.clear()
    first = work_fleet.start_worker("bezalel", FIX_SCRIPT)
    killers: list[Killer] = []

    def killing() -> Killer:
        killers.append(Killer(work_fleet.gateways["bezalel"].client(timeout=30), first))
        return killers[-1]

    work_fleet.worker(first).sender = killing
    assert len(work_fleet.intake(healthy=lambda agent: agent.name == "bezalel").run().routed) == 1
    wait_for(lambda: killers and killers[0].killed.is_set(), 60, "bezalel to be killed")
    assert work_fleet.pulls()["gitea"] == 1  # opened before the worker died


def test_a_worker_killed_mid_item_leaves_it_resumed_and_still_one_pull_request(
        work_fleet: WorkFleet) -> None:
    kill_after_its_pull_request(work_fleet)
    (item,) = work_fleet.items()
    assert (item["state"], item["assignee"]) == ("working", "bezalel")

    work_fleet.start_worker("allegro", FIX_SCRIPT)
    soon = work_fleet.intake(healthy=lambda agent: agent.name == "allegro").run()
    assert soon.resumed == [] and soon.routed == []  # not silent for long enough yet
    later = work_fleet.intake(healthy=lambda agent: agent.name == "allegro",
                              now=lambda: time.time() + 5 * 60 + GRACE_S + 60).run()
    assert (later.resumed, later.routed) == ([item["id"]], [item["id"]])
    (proposed,) = work_fleet.settled("proposed", 1)
    assert proposed["assignee"] == "allegro" and proposed["attempts"] == 2
    assert work_fleet.pulls()["gitea"] == 1
    assert proposed["pr_url"] and proposed["pr_url"].endswith(
        f"/{work_fleet.forges['gitea'].pulls()[0].number}")


def test_a_worker_killed_mid_item_resumes_it_when_it_starts_again(
        work_fleet: WorkFleet) -> None:
    """kill -9 (or a crash, or a stop for a deploy) midway: the runtime's next start takes the
    item up again at once, from the branch it pushed, and finds the pull request it opened."""
    kill_after_its_pull_request(work_fleet)
    assert (work_fleet.gateways["bezalel"].state / CURRENT_FILE).is_file()

    work_fleet.start_worker("bezalel", [turn(text="The fix is pushed already.")])
    (proposed,) = work_fleet.settled("proposed", 1)
    assert (proposed["assignee"], proposed["attempts"]) == ("bezalel", 1)
    assert work_fleet.pulls()["gitea"] == 1 and len(work_fleet.forges["gitea"].comments) == 1
    kinds = [event["kind"] for event in items.timeline(work_fleet.gateways["ezra"].state,
                                                       proposed["id"])]
    assert kinds.count("resumed") == 1 and kinds.index("resumed") > kinds.index("pushed")
    assert not (work_fleet.gateways["bezalel"].state / CURRENT_FILE).exists()


def test_an_item_the_runtime_keeps_dying_on_fails_instead_of_being_resumed_again(
        work_fleet: WorkFleet) -> None:
    for kind in ("github", "gitlab"):
        work_fleet.forges[kind].items.clear()
    report = work_fleet.intake(healthy=lambda agent: False).run()
    (item,) = work_fleet.items()
    assert report.routed == []
    items.start(work_fleet.gateways["ezra"].state, item["id"], "bezalel")
    issue = work_fleet.forges["gitea"].items[0]
    order = ItemOrder(item["id"], issue.number, issue.title, "", item["issue_url"], "gitea",
                      "acme/gitea-shop", work_fleet.git.url + "/acme/gitea-shop.git", "main")
    state = work_fleet.gateways["bezalel"].state
    (state / CURRENT_FILE).write_text(json.dumps(
        {"from": "ezra", "payload": order.payload(), "resumes": MAX_RESUMES}))
    work_fleet.start_worker("bezalel", FIX_SCRIPT)
    (failed,) = work_fleet.settled("failed", 1)
    assert failed["reason"] == ("bezalel's runtime stopped 3 times during this item; it was "
                                "not resumed again")
    assert work_fleet.pulls()["gitea"] == 0 and not (state / CURRENT_FILE).exists()


@pytest.mark.parametrize("kept", ["not json", '{"from": "allegro", "payload": {}, "resumes": 0}',
                                  '{"from": "ezra", "payload": {"item": "x"}, "resumes": true}',
                                  '{"from": "ezra", "payload": {"item": "../x"}, "resumes": 0}'])
def test_a_kept_item_that_is_not_one_is_dropped_and_nothing_runs(
        work_fleet: WorkFleet, kept: str) -> None:
    state = work_fleet.gateways["bezalel"].state
    state.mkdir(parents=True, exist_ok=True)
    (state / CURRENT_FILE).write_text(kept)
    runtime = from_env(work_fleet.env("bezalel"))
    assert work_fleet.worker(runtime).resume() is None
    assert not (state / CURRENT_FILE).exists() and work_fleet.worker(runtime).current is None


def test_a_work_event_from_another_than_the_assignee_is_refused(
        work_fleet: WorkFleet) -> None:
    state = work_fleet.gateways["ezra"].state
    issue = work_fleet.forges["gitea"].items[0]
    item = items.create(state, "gitea", "acme/gitea-shop", issue.number,
                        "https://forge.invalid/acme/gitea-shop/issues/1", issue.title,
                        api_url="https://forge.invalid/api/v1")
    items.start(state, item["id"], "bezalel")
    with work_fleet.gateways["allegro"].client() as allegro:
        allegro.send("ezra", EVENT, {"item": item["id"], "kind": "pushed",
                                     "detail": {"branch": "fleet/ISSUE-1"}})
        allegro.send("ezra", "work.outcome", {"item": item["id"], "state": "failed",
                                              "reason": "taken over", "pr_url": None})
    wait_for(lambda: len(work_fleet.ezra.messages(unacked=1)["messages"]) == 2, 30,
             "allegro's messages to reach ezra")
    intake = work_fleet.intake()
    intake.record_messages()
    assert sorted(intake.report.refused) == [  # delivered in either order
        f"work.event from allegro refused: {item['id']} is working on bezalel, not on allegro",
        f"work.outcome from allegro refused: {item['id']} is working on bezalel, not on "
        "allegro"]
    assert items.get(state, item["id"])["state"] == "working"
    assert [event["kind"] for event in items.timeline(state, item["id"])] == ["intake",
                                                                               "routed"]
    assert work_fleet.ezra.messages(unacked=1)["messages"] == []  # refused, not retried


def test_a_work_item_from_anyone_but_the_orchestrator_is_refused(
        work_fleet: WorkFleet) -> None:
    runtime = from_env(work_fleet.env("bezalel"))
    payload = {"item": "w-0123456789ab", "issue": 1, "title": "t", "body": "",
               "issue_url": "https://forge.invalid/acme/gitea-shop/issues/1", "forge": "gitea",
               "repo": "acme/gitea-shop", "git_url": work_fleet.git.url + "/acme/gitea-shop.git",
               "base": "main"}
    worker = work_fleet.worker(runtime)
    assert worker.offer({"from": "allegro", "payload": payload}) == {
        "refused": "only the orchestrator (ezra) sends work items"}
    assert worker.offer({"from": "ezra", "payload": {**payload, "git_url":
                                                     "http://127.0.0.1:1/other.git"}}) == {
        "refused": "git_url 'http://127.0.0.1:1/other.git' is not a git_url of the registry's "
                   "work sources"}
    assert worker.offer({"from": "ezra", "payload": {**payload, "base": "--upload-pack=x"}})[
        "refused"].startswith("base branch '--upload-pack=x' is not a branch name")
    assert worker.offer({"from": "ezra", "payload": {**payload, "issue": True}}) == {
        "refused": "issue number True is not a positive integer"}
    assert worker.offer({"from": "ezra", "payload": payload, "ttl": 30,
                         "timestamp": "2026-01-01T00:00:00Z"}) == {
        "refused": "the work item came too late (ttl 30 s): the orchestrator gave up waiting"}
    assert worker.current is None


def test_while_an_item_runs_the_worker_answers_requests_and_another_item_is_busy(
        work_fleet: WorkFleet, provider: MockProvider) -> None:
    for kind in ("github", "gitlab"):
        work_fleet.forges[kind].items.clear()
    second = work_fleet.forges["gitea"].add_issue("another", ["fleet"])
    runtime = work_fleet.start_worker("bezalel", FIX_SCRIPT)
    model = work_fleet.models["bezalel"]
    model.hold = threading.Event()  # the item's model thinks until released
    try:
        report = work_fleet.intake().run()
        assert report.taken == 2 and len(report.routed) == 1  # one item per worker
        wait_for(lambda: len(model.requests) == 1, 30, "the item's first model turn")
        provider.reply = "four"
        answer = work_fleet.ezra.request("bezalel", {"prompt": "2+2?"}, timeout=30)
        assert answer["payload"]["text"] == "four"  # the runtime answers meanwhile
        queued = next(item for item in work_fleet.items() if item["state"] == "queued")
        assert queued["issue"] == second.number
        intake = work_fleet.intake()
        order = ItemOrder(queued["id"], second.number, second.title, "", queued["issue_url"],
                          "gitea", "acme/gitea-shop", work_fleet.git.url +
                          "/acme/gitea-shop.git", "main")
        running = work_fleet.worker(runtime).current
        assert intake.offer("bezalel", order, 9)["busy"] == running
        assert runtime.status["state"] == "ready"
    finally:
        model.hold.set()
    work_fleet.settled("proposed", 1)


def test_an_issue_whose_page_is_not_on_its_forges_site_is_not_taken(
        work_fleet: WorkFleet) -> None:
    """Outside attack r36 (F6): a forge could answer an issue page on another site (another
    source's issue, or a link the dashboard would follow); intake takes only its own."""
    state = work_fleet.gateways["ezra"].state
    forge = work_fleet.forges["github"]
    forge.web = "http://192.0.2.66"
    report = work_fleet.intake().run()
    assert any("is not on the forge's own site" in why for why in report.refused)
    assert not [item for item in items.listing(state)["items"] if item["forge"] == "github"]
