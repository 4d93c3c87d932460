"""The repository loop of one work item against a real git server (git http-backend on
loopback) and a scripted OpenAI-compatible provider (deterministic tool calls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.node.provider import Provider
from fleet.node.work.repo_loop import (
    Bounds,
    Git,
    SuiteRun,
    Task,
    basic_auth_header,
    work_on,
    workspace_root,
)
from fleet.node.work.workspace import Workspace, WorkspaceError, path_problem
from tests.runtime.conftest import MockProvider
from tests.work.git_server import GitServer

TOKEN = "forge-token-0123456789abcdef"
BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TESTS = "from calc import add\n\nassert add(2, 3) == 5, 'add(2, 3) is not 5'\nprint('ok')\n"


class Proposals:
    """A forge's pull requests as the loop sees them: one per branch (an open one is found,
    not opened again), and comments on issues."""

    def __init__(self) -> None:
        self.opened: dict[str, dict[str, str]] = {}
        self.comments: list[tuple[int, str]] = []

    def propose(self, branch: str, base: str, title: str, body: str) -> str:
        if branch not in self.opened:
            self.opened[branch] = {"base": base, "title": title, "body": body,
                                   "url": f"http://forge.invalid/pulls/{len(self.opened) + 1}"}
        return self.opened[branch]["url"]

    def commented(self, issue_number: int, body: str) -> bool:
        return (issue_number, body) in self.comments

    def comment(self, issue_number: int, body: str) -> None:
        self.comments.append((issue_number, body))


def local_tests(workspace: Path) -> SuiteRun:
    """The repository's test command, run plainly (the sandbox has tests of its own); it
    leaves ``__pycache__`` behind as a real one does, whatever this machine's environment."""
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "test_calc.py"], cwd=workspace, capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    return SuiteRun(done.returncode == 0, "passed" if done.returncode == 0 else "failed",
                   done.stdout + done.stderr)


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"id": f"call-{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def turn(*calls: dict[str, Any], text: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = list(calls)
    return message


DEFAULT_BOUNDS = Bounds(max_steps=10, max_minutes=5)
FIX_SCRIPT = [turn(call("list_files")), turn(call("read_file", path="calc.py")),
              turn(call("write_file", path="calc.py", content=FIXED)),
              turn(call("run_tests")), turn(text="add() now adds.")]


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    server = GitServer(tmp_path / "forge", TOKEN)
    try:
        yield server
    finally:
        server.close()


class Run:
    """One item against the server, with its timeline."""

    def __init__(self, tmp_path: Path, server: GitServer, mock: MockProvider) -> None:
        self.url = server.create("acme/shop", {"calc.py": BUGGY, "test_calc.py": TESTS})
        self.task = Task("w-0123456789ab", 7, "add() subtracts", "2 + 3 gives -1",
                         "http://forge.invalid/acme/shop/issues/7", self.url)
        self.state = tmp_path / "state"
        self.provider = Provider(mock.url, mock.key, "test/m", timeout=30)
        self.proposals = Proposals()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, bounds: Bounds = DEFAULT_BOUNDS, **kw: Any) -> Any:
        git = kw.pop("git", None) or Git.for_item(self.state, self.task.item_id,
                                                  basic_auth_header("gitea", TOKEN))
        return work_on(self.task, self.state, provider=self.provider, proposals=self.proposals,
                       run_tests=kw.pop("run_tests", local_tests),
                       events=lambda kind, detail: self.events.append((kind, detail)),
                       bounds=bounds, git=git, **kw)


@pytest.fixture
def run(tmp_path: Path, git_server: GitServer, provider: MockProvider) -> Run:
    return Run(tmp_path, git_server, provider)


def test_a_fix_is_pushed_on_its_branch_and_proposed_with_the_issue_linked(
        run: Run, git_server: GitServer, provider: MockProvider) -> None:
    provider.script = list(FIX_SCRIPT)
    main_before = git_server.branches("acme/shop")["main"]
    outcome = run()
    assert (outcome.state, outcome.pr_url, outcome.steps) == (
        "proposed", "http://forge.invalid/pulls/1", 5)
    branches = git_server.branches("acme/shop")
    assert branches["main"] == main_before  # the default branch is never pushed
    assert git_server.show("acme/shop", "fleet/ISSUE-7", "calc.py") == FIXED
    opened = run.proposals.opened["fleet/ISSUE-7"]
    assert opened["base"] == "main" and opened["title"] == "add() subtracts"
    assert "For #7: http://forge.invalid/acme/shop/issues/7" in opened["body"]
    assert "add() now adds." in opened["body"]
    assert run.proposals.comments == [(7, "A pull request for this issue: "
                                          "http://forge.invalid/pulls/1")]
    assert [kind for kind, _ in run.events] == [
        "turn", "tool", "turn", "tool", "turn", "tool", "turn", "test", "turn", "test",
        "pushed", "proposed"]
    tools = provider.requests[0]["tools"]
    assert [tool["function"]["name"] for tool in tools] == [
        "list_files", "read_file", "write_file", "run_tests"]
    assert provider.requests[1]["messages"][-1]["role"] == "tool"  # results go back


def test_the_same_item_run_again_continues_its_branch_and_opens_no_second_pull_request(
        run: Run, git_server: GitServer, provider: MockProvider) -> None:
    """A worker killed after the push: the next attempt (a fresh workspace) starts from the
    pushed branch, and the open pull request is found, not opened again."""
    provider.script = list(FIX_SCRIPT)
    first = run()
    pushed = git_server.branches("acme/shop")["fleet/ISSUE-7"]
    subprocess.run(["rm", "-rf", str(run.state / "work"), str(run.state / "work-git")],
                   check=True)
    provider.script = [turn(call("read_file", path="calc.py")), turn(text="Done already.")]
    second = run()
    assert second.state == "proposed" and second.pr_url == first.pr_url
    assert len(run.proposals.opened) == 1
    assert git_server.branches("acme/shop")["fleet/ISSUE-7"] == pushed  # nothing new to push
    read = provider.requests[-1]["messages"][-1]
    assert json.loads(read["content"]) == {"content": FIXED}  # it saw the pushed fix


def test_only_the_files_the_model_wrote_are_committed(
        run: Run, git_server: GitServer, provider: MockProvider) -> None:
    """Stop 35's CI failure: the commit took the whole tree, so the test command's
    ``__pycache__`` went into the pull request, and an attempt run again pushed a new commit
    when only a cache's timestamp had changed. A commit now takes the files the model wrote,
    and of those not one the repository ignores."""
    provider.script = [turn(call("write_file", path=".gitignore", content="secret.env\n")),
                       turn(call("write_file", path="secret.env", content="TOKEN=x\n")),
                       turn(call("write_file", path="docs/fix.md", content="add adds\n")),
                       turn(call("write_file", path="calc.py", content=FIXED)),
                       turn(call("run_tests")), turn(text="Fixed.")]

    def tests_that_leave_output(workspace: Path) -> SuiteRun:
        (workspace / "build").mkdir(exist_ok=True)
        (workspace / "build" / "report.xml").write_text("<ok/>")
        return local_tests(workspace)  # python writes __pycache__/calc.*.pyc

    outcome = run(run_tests=tests_that_leave_output)
    assert outcome.state == "proposed", outcome.reason
    assert (workspace_root(run.state, run.task.item_id) / "__pycache__").is_dir()
    assert sorted(git_server.files("acme/shop", "fleet/ISSUE-7")) == [
        ".gitignore", "calc.py", "docs/fix.md", "test_calc.py"]
    assert [detail["files"] for kind, detail in run.events if kind == "pushed"] == [
        [".gitignore", "calc.py", "docs/fix.md"]]


def test_a_rerun_after_the_clock_moved_pushes_nothing_new(
        run: Run, git_server: GitServer, provider: MockProvider) -> None:
    """The same item run again a second later (the checkout's timestamps new, the test
    command's caches rebuilt) finds nothing to commit: the pushed branch stays as it was."""
    provider.script = list(FIX_SCRIPT)
    run()
    pushed = git_server.branches("acme/shop")["fleet/ISSUE-7"]
    provider.script = [turn(call("run_tests")), turn(text="Done already.")]

    def tests_a_second_later(workspace: Path) -> SuiteRun:
        os.utime(workspace / "calc.py", (2, 2))  # as a checkout in another second leaves it
        return local_tests(workspace)  # so python rebuilds its cache, with other bytes

    again = run(run_tests=tests_a_second_later)
    assert again.state == "proposed"
    assert git_server.branches("acme/shop")["fleet/ISSUE-7"] == pushed


def test_the_loop_stops_at_max_steps_and_fails_saying_why(
        run: Run, git_server: GitServer, provider: MockProvider) -> None:
    provider.script = [turn(call("list_files")) for _ in range(10)]
    outcome = run(Bounds(max_steps=3, max_minutes=5))
    assert outcome.state == "failed" and outcome.steps == 3
    assert outcome.reason == ("the tests do not pass (failed) after 3 model turns (max_steps 3): "
                              "AssertionError: add(2, 3) is not 5")
    assert len(provider.requests) == 3
    assert "fleet/ISSUE-7" not in git_server.branches("acme/shop")
    assert run.proposals.opened == {}


def test_the_loop_stops_at_max_minutes(run: Run, provider: MockProvider) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 200.0  # each look at the clock: 200 s later
        return now[0]

    provider.script = [turn(call("list_files")) for _ in range(10)]
    outcome = run(Bounds(max_steps=10, max_minutes=10), clock=clock)
    assert outcome.state == "failed" and 1 <= outcome.steps <= 2
    assert outcome.reason == f"out of time after {outcome.steps} model turns (max_minutes 10)"


def test_tests_that_pass_with_nothing_changed_open_no_pull_request(
        run: Run, git_server: GitServer, provider: MockProvider) -> None:
    provider.script = [turn(text="Nothing to do.")]
    outcome = run(run_tests=lambda root: SuiteRun(True, "passed", "ok"))
    assert (outcome.state, outcome.reason) == (
        "failed", "the tests pass but nothing was changed: no pull request")
    assert "fleet/ISSUE-7" not in git_server.branches("acme/shop")


def test_a_wrong_token_fails_the_item_and_the_token_is_in_no_reason_or_event(
        run: Run, provider: MockProvider) -> None:
    wrong = "forge-token-WRONG-secret-value"
    outcome = run(git=Git.for_item(run.state, run.task.item_id,
                                   basic_auth_header("github", wrong)))
    assert outcome.state == "failed"
    assert outcome.reason.startswith("could not prepare the workspace: git fetch failed:")
    shown = json.dumps([outcome.reason, run.events])
    assert wrong not in shown and TOKEN not in shown
    assert provider.requests == []


@pytest.mark.parametrize(("tool", "args", "refusal"), [
    ("read_file", {"path": "../outside.txt"}, "has a '.' or '..' part"),
    ("read_file", {"path": "/etc/passwd"}, "is not a relative path"),
    ("read_file", {"path": "a/../../outside.txt"}, "has a '.' or '..' part"),
    ("read_file", {"path": ".git/config"}, "is inside .git"),
    ("read_file", {"path": "leak/passwd"}, "is not a folder of the workspace"),
    ("read_file", {"path": "link.txt"}, "is a symlink; it is not followed"),
    ("write_file", {"path": "leak/planted", "content": "x"}, "is not a folder of the workspace"),
    ("write_file", {"path": "link.txt", "content": "x"}, "is a symlink, a folder or a device"),
    ("write_file", {"path": "x\ud800", "content": "x"}, "is not a relative path"),
    ("write_file", {"path": "ok.txt", "content": "\ud800"}, "lone surrogate"),
    ("write_file", {"path": "-rf", "content": "x"}, "starting with '-'"),
    ("list_files", {"path": "leak"}, "is not a folder of the workspace"),
    ("delete_everything", {}, "no tool 'delete_everything'"),
])
def test_the_file_tools_never_leave_the_workspace(
        tmp_path: Path, tool: str, args: dict[str, Any], refusal: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "leak").symlink_to(outside)
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    from fleet.node.work.repo_loop import use_tool

    events: list[tuple[str, dict[str, Any]]] = []
    result = use_tool(call(tool, **args), Workspace(root), lambda path: SuiteRun(True, "passed"),
                      lambda kind, detail: events.append((kind, detail)))
    assert refusal in result["error"], result
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert (tmp_path / "outside.txt").read_text() == "secret\n"
    assert events[-1][1]["ok"] is False


def test_listing_skips_git_and_never_follows_a_symlinked_folder(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("")
    (root / "etc").symlink_to("/etc")
    assert Workspace(root).list_files() == ["etc", "src/a.py"]
    assert Workspace(root).write_file("new/deep/b.py", "x = 1\n") == 6
    assert Workspace(root).read_file("new/deep/b.py") == "x = 1\n"
    with pytest.raises(WorkspaceError, match=r"is larger than|bytes; the tools"):
        Workspace(root).write_file("big", "x" * (256 * 1024 + 1))


@given(st.text(max_size=80))
def test_every_path_the_tools_accept_stays_inside_the_workspace(path: str) -> None:
    if path_problem(path):
        return
    resolved = os.path.normpath(os.path.join("/ws", path))
    assert resolved.startswith("/ws/") and ".git" not in path.split("/")
    assert not any(part.startswith("-") or part in ("", ".", "..") for part in path.split("/"))
    assert path.isascii() and path.isprintable()


def test_an_item_id_is_checked_before_it_names_a_folder(tmp_path: Path) -> None:
    from fleet.node.work.repo_loop import RepoLoopError

    arabic_indic_digits = "".join(chr(0x660 + digit) for digit in range(10))
    for bad in ("../x", "w-0123456789aB", "w-0123456789ab/..", f"w-{arabic_indic_digits}ab"):
        with pytest.raises(RepoLoopError):
            workspace_root(tmp_path, bad)


def test_test_code_cannot_make_git_run_a_command_or_see_the_token(
        run: Run, git_server: GitServer, provider: MockProvider, tmp_path: Path) -> None:
    """Outside attack r35 (F1): the repository's tests wrote `core.fsmonitor` into .git/config
    in the tree, and the next `git add` ran it outside the sandbox with the token in its
    environment. Git now works on a git dir beside the tree, and only commands that talk to
    the forge get the token."""
    dump = tmp_path / "fsmonitor-ran"
    planting = (f"import os, pathlib\nos.makedirs('.git', exist_ok=True)\n"
                f"pathlib.Path('.git/config').write_text('[core]\\n\\tfsmonitor = \"env > {dump}; "
                f"true\"\\n[remote \"origin\"]\\n\\turl = http://192.0.2.66/x.git\\n')\n"
                f"pathlib.Path('.gitattributes').write_text('* filter=evil\\n')\n")
    provider.script = [turn(call("write_file", path="conftest_plant.py", content=planting)),
                       turn(call("write_file", path="calc.py", content=FIXED)),
                       turn(text="Fixed.")]

    def tests_that_plant(workspace: Path) -> SuiteRun:
        subprocess.run([sys.executable, "conftest_plant.py"], cwd=workspace, check=True)
        return local_tests(workspace)

    outcome = run(run_tests=tests_that_plant)
    assert outcome.state == "proposed", outcome.reason
    assert not dump.exists()  # git ran no command of the repository's
    git = Git.for_item(run.state, run.task.item_id, basic_auth_header("gitea", TOKEN))
    assert git.tree == workspace_root(run.state, run.task.item_id) == run.state / "work" / (
        run.task.item_id)
    assert not git.git_dir.is_relative_to(git.tree)  # out of the sandbox's writable tree
    config = (git.git_dir / "config").read_text()
    assert "fsmonitor" not in config and run.url in config  # the remote is still the forge's
    assert git_server.show("acme/shop", "fleet/ISSUE-7", "calc.py") == FIXED
    assert "http.extraHeader" not in json.dumps(git.env(network=False))
    assert "http.extraHeader" in json.dumps(git.env(network=True))


@pytest.mark.parametrize("calls", [
    ["x"], [None], [{"function": None}], "not a list",
    [{"id": {"x": 1}, "function": {"name": "list_files", "arguments": "[" * 100_000}}],
    [{"id": "a", "function": {"name": "read_file", "arguments": {"path": "calc.py"}}}],
    [{"id": "a" * 10_000, "function": {"name": "x" * 10_000, "arguments": "{}"}}],
])
def test_hostile_tool_calls_never_raise(run: Run, provider: MockProvider, calls: Any) -> None:
    """Outside attack r35 (F2): tool_calls of strings or nulls, or arguments nested 100,000
    deep, crashed the loop with a traceback."""
    provider.script = [{"role": "assistant", "content": "", "tool_calls": calls},
                       turn(text="Done.")]
    outcome = run(run_tests=lambda root: SuiteRun(True, "passed", "ok"))
    assert outcome.state == "failed"
    if calls == "not a list":  # the provider's parser refuses the answer: the model failed
        assert outcome.reason.endswith("/chat/completions: not a chat completion answer")
        return
    assert "nothing was changed" in outcome.reason
    sent = provider.requests[-1]["messages"]
    for message in sent:
        for tool_call in message.get("tool_calls") or []:
            assert isinstance(tool_call["id"], str) and len(tool_call["id"]) <= 100
            assert tool_call["function"]["name"] in ("list_files", "read_file", "?")


def test_a_tree_nested_too_deep_is_refused_not_a_crash(tmp_path: Path) -> None:
    """Outside attack r35 (F3): 1,000 nested folders made list_files recurse past Python's
    limit. The walk keeps no stack of calls, and stops at 64 levels."""
    root = tmp_path / "ws"
    deep = root.joinpath(*["d"] * 200)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("")
    with pytest.raises(WorkspaceError, match="folders nest deeper than 64"):
        Workspace(root).list_files()
    assert Workspace(root).list_files("/".join(["d"] * 150)) == [
        "/".join(["d"] * 200) + "/f.txt"]


def test_one_turn_runs_at_most_eight_tool_calls(run: Run, provider: MockProvider) -> None:
    """Outside attack r35 (F4): one turn of 50 run_tests calls ran 51 suites past
    max_minutes."""
    runs: list[Path] = []

    def counting(root: Path) -> SuiteRun:
        runs.append(root)
        return SuiteRun(False, "failed", "no")

    provider.script = [{"role": "assistant", "content": "",
                        "tool_calls": [call("run_tests") for _ in range(50)]}]
    provider.reply = ""
    outcome = run(Bounds(max_steps=1, max_minutes=5), run_tests=counting)
    assert len(runs) == 8 + 1  # eight in the turn, then the final run
    refused = [json.loads(message["content"]) for message in provider.requests[-1]["messages"]
               if message["role"] == "tool"] if len(provider.requests) > 1 else []
    assert refused == [] and outcome.state == "failed"


def test_a_turn_past_the_deadline_runs_no_more_tools(run: Run, provider: MockProvider) -> None:
    now = [0.0]
    runs: list[Path] = []

    def slow_tests(root: Path) -> SuiteRun:
        runs.append(root)
        now[0] += 400.0  # each suite: 400 s
        return SuiteRun(False, "failed", "no")

    provider.script = [{"role": "assistant", "content": "",
                        "tool_calls": [call("run_tests") for _ in range(5)]}]
    outcome = run(Bounds(max_steps=5, max_minutes=10), run_tests=slow_tests,
                  clock=lambda: now[0])
    assert len(runs) == 2  # 0 s and 400 s start; at 800 s the deadline (600 s) has passed
    assert outcome.reason == "out of time after 1 model turns (max_minutes 10)"


@pytest.mark.parametrize("tool", ["read_file", "write_file"])
def test_a_hard_link_to_a_file_outside_is_neither_read_nor_written(
        tmp_path: Path, tool: str) -> None:
    """Outside attack r35 (F7): a hard link in the workspace (test code can make one) let the
    tools read and overwrite a file outside it."""
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    root = tmp_path / "ws"
    root.mkdir()
    os.link(outside, root / "linked.txt")
    with pytest.raises(WorkspaceError, match="has other hard links"):
        if tool == "read_file":
            Workspace(root).read_file("linked.txt")
        else:
            Workspace(root).write_file("linked.txt", "overwritten\n")
    assert outside.read_text() == "secret\n"
