"""The repository loop a worker runs for one work item: clone the repository into the item's
workspace, give the model file tools and the repository's test command, at most ``max_steps``
model turns within ``max_minutes``, then commit on the item's branch (``fleet/ISSUE-N``), push
it and propose a pull request (a merge request on GitLab) that a person reviews.

An item's work tree is ``work/ITEM_ID`` under the state dir (the only place the file tools
and the sandboxed tests may write: :mod:`fleet.node.work.sandbox`); its git directory lies
outside it, in ``work-git/ITEM_ID``, and git is always pointed at both (``GIT_DIR``,
``GIT_WORK_TREE``): the repository's code and tests can neither plant git configuration
(``core.fsmonitor``, filters, a new ``remote.origin.url``) nor hooks that git would run
outside the sandbox.

What the loop never does: merge, push the default branch, force-push (the push names one
branch, ``HEAD:refs/heads/fleet/ISSUE-N``, without ``+``), run a hook or a configured command
from the repository, hand the forge's credentials to a git command that does not talk to the
forge, or write outside the work tree (:mod:`fleet.node.work.workspace`).
Started again on the same item (a worker killed midway), it picks up the branch it pushed and
the pull request it opened instead of opening a second one (:meth:`Proposals.propose` finds an
open one for the branch first).

The forge and the sandbox come in through small protocols (:class:`Proposals`,
:data:`RunTests`), so the loop is the same for every forge and every sandbox.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fleet.core.errors import FleetError
from fleet.node.provider import Provider, ProviderError
from fleet.node.work.workspace import Workspace, WorkspaceError

BRANCH_PREFIX = "fleet/ISSUE-"
GIT_TIMEOUT_S = 300.0
MAX_TOOL_RESULT = 16 * 1024
MAX_CALLS_PER_TURN = 8
MAX_ARGUMENTS = 2 * 256 * 1024 + 4096  # a whole file's content, JSON-escaped
MAX_CONVERSATION = 512 * 1024  # beyond it, the oldest tool results are dropped
MAX_ANSWER_TOKENS = 2048
MAX_ISSUE_TEXT = 8192
GIT_PATH = "/usr/local/bin:/usr/bin:/bin"
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "list_files", "description": "List the repository's files (below a folder).",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "a folder; empty for the whole tree"}},
            "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "read_file", "description": "Read one file of the repository.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "write_file", "description": "Replace (or create) one file of the repository.",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "run_tests", "description": "Run the repository's tests; returns whether they "
                                            "passed and the end of their output.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}},
]
INSTRUCTIONS = (
    "You work on a git repository to resolve one issue. Use the tools to read the files, "
    "change them and run the tests. When the tests pass and the issue is resolved, answer "
    "with a short summary of what you changed and no tool call.")


class RepoLoopError(FleetError):
    """A git step failed (clone, fetch, commit, push); the item fails with this reason."""


@dataclass(frozen=True)
class SuiteRun:
    """One run of the repository's test command in the sandbox."""

    passed: bool
    reason: str  # passed, failed, timeout, memory, tasks, killed, refused
    output: str = ""  # its end


RunTests = Callable[[Path], SuiteRun]
"""Runs the test command in the workspace at the given path (the sandbox's client)."""

Events = Callable[[str, dict[str, Any]], object]
"""Records one timeline event of the item: kind (turn, tool, test, pushed, proposed, failed)
and a small JSON detail."""


class Proposals(Protocol):
    """What the loop needs of a forge: a pull request for a branch (the open one there is, else
    a new one) and a comment on the issue."""

    def propose(self, branch: str, base: str, title: str, body: str) -> str:
        """The URL of the open pull request from ``branch`` into ``base``, opened if none."""
        ...

    def commented(self, issue_number: int, body: str) -> bool:
        """Whether the issue has this comment already (an earlier attempt made it)."""
        ...

    def comment(self, issue_number: int, body: str) -> None: ...


@dataclass(frozen=True)
class Task:
    """One work item as the worker gets it."""

    item_id: str
    issue_number: int
    title: str
    body: str
    issue_url: str
    git_url: str
    base: str = "main"  # the default branch: the pull request's target, never pushed

    @property
    def branch(self) -> str:
        return f"{BRANCH_PREFIX}{self.issue_number}"


@dataclass(frozen=True)
class Bounds:
    """How far one item may go."""

    max_steps: int = 20
    max_minutes: float = 15.0


@dataclass(frozen=True)
class Outcome:
    """How the item ended: ``proposed`` with the pull request's URL, or ``failed`` with the
    reason."""

    state: str
    reason: str
    pr_url: str | None = None
    steps: int = 0


@dataclass
class Git:
    """``git`` for one item, as argv (no shell), on its git directory and work tree (never a
    ``.git`` found in the tree), with no prompt, no system or global config, no hooks, no
    fsmonitor, http(s) only, and the forge's credentials (an ``Authorization`` header) in the
    environment of the commands that talk to the forge only (``GIT_CONFIG_*``), never in argv
    or a file."""

    tree: Path
    git_dir: Path
    auth_header: str = ""
    author: str = "Sovereign Fleet agent"
    email: str = "agent@fleet.invalid"
    timeout: float = GIT_TIMEOUT_S

    @classmethod
    def for_item(cls, state_dir: Path, item_id: str, auth_header: str = "") -> Git:
        """Git for the item ``item_id`` of the agent whose state dir is ``state_dir``."""
        tree = workspace_root(state_dir, item_id)
        return cls(tree, state_dir / "work-git" / item_id, auth_header)

    def env(self, network: bool) -> dict[str, str]:
        env = {"PATH": GIT_PATH, "HOME": str(self.git_dir), "LANG": "C.UTF-8",
               "GIT_DIR": str(self.git_dir), "GIT_WORK_TREE": str(self.tree),
               "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_LITERAL_PATHSPECS": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
               "GIT_ATTR_NOSYSTEM": "1",
               "GIT_AUTHOR_NAME": self.author, "GIT_AUTHOR_EMAIL": self.email,
               "GIT_COMMITTER_NAME": self.author, "GIT_COMMITTER_EMAIL": self.email}
        settings = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false",
                    "protocol.allow": "never", "protocol.http.allow": "always",
                    "protocol.https.allow": "always", "push.default": "nothing",
                    "http.followRedirects": "false", "submodule.recurse": "false"}
        if network and self.auth_header:
            settings["http.extraHeader"] = self.auth_header
        env["GIT_CONFIG_COUNT"] = str(len(settings))
        for index, (key, value) in enumerate(settings.items()):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def __call__(self, *args: str, network: bool = False) -> str:
        """``git ARGS``' output; :class:`RepoLoopError` with its last error line on failure.
        ``network``: the command talks to the forge (clone, fetch, ls-remote, push)."""
        try:
            done = subprocess.run(["git", *args], cwd=self.git_dir, env=self.env(network),
                                  capture_output=True, text=True, timeout=self.timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RepoLoopError(f"git {args[0]} took longer than {self.timeout:.0f} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise RepoLoopError(f"git {args[0]} failed: {last[:300]}")
        return done.stdout


def prepare(task: Task, git: Git) -> Workspace:
    """The item's work tree on its branch: cloned (or, left by an earlier attempt, fetched
    again), the branch taken from the remote when an earlier attempt pushed it, else made from
    the default branch; anything else in the tree is removed."""
    if not (git.git_dir / "HEAD").is_file():
        for folder in (git.tree, git.git_dir):
            if folder.exists():
                shutil.rmtree(folder)
        git.git_dir.mkdir(parents=True, mode=0o700)
        git.tree.mkdir(parents=True, mode=0o755)
        git("init", "--quiet")  # at GIT_DIR, for the work tree GIT_WORK_TREE
        git("remote", "add", "origin", "--", task.git_url)
    git("fetch", "--quiet", "--prune", "--no-tags", "origin", network=True)
    pushed = git("ls-remote", "--heads", "origin", f"refs/heads/{task.branch}",
                 network=True).strip()
    start = f"origin/{task.branch}" if pushed else f"origin/{task.base}"
    git("checkout", "--quiet", "--force", "-B", task.branch, start)
    git("clean", "--quiet", "-d", "--force", "--force", "-x")
    return Workspace(git.tree)


def issue_prompt(task: Task) -> str:
    return (f"Issue #{task.issue_number}: {task.title}\n{task.issue_url}\n\n"
            f"{task.body[:MAX_ISSUE_TEXT]}")


def work_on(task: Task, state_dir: Path, *, provider: Provider, proposals: Proposals,
            run_tests: RunTests, events: Events, bounds: Bounds, soul: str = "",
            git: Git | None = None, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Run the loop for ``task`` in its work tree under ``state_dir`` (``git``: how to reach
    the forge's git server, :meth:`Git.for_item`); never raises for what the model, the tests,
    git or the forge do: the outcome says how it ended."""
    git = git or Git.for_item(state_dir, task.item_id)
    deadline = clock() + bounds.max_minutes * 60
    try:
        workspace = prepare(task, git)
    except (RepoLoopError, OSError) as exc:
        return failed(events, f"could not prepare the workspace: {exc}", 0)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"{soul}\n\n{INSTRUCTIONS}".strip()},
        {"role": "user", "content": issue_prompt(task)}]
    steps = 0
    summary = ""
    while True:
        if steps >= bounds.max_steps:
            break
        left = deadline - clock()
        if left <= 0:
            return failed(events, f"out of time after {steps} model turns "
                                  f"(max_minutes {bounds.max_minutes:g})", steps)
        try:
            done = provider.chat(messages, max_tokens=MAX_ANSWER_TOKENS, tools=TOOLS,
                                 timeout=min(left, provider.timeout), temperature=0)
        except ProviderError as exc:
            return failed(events, f"the model failed: {str(exc)[:300]}", steps)
        steps += 1
        calls = well_formed(done.tool_calls)
        events("turn", {"step": steps, "tokens": done.tokens,
                        "tool_calls": [call_name(call) for call in calls[:MAX_CALLS_PER_TURN]]})
        if not done.tool_calls:
            summary = done.text.strip()
            break
        messages.append({"role": "assistant", "content": done.text[:MAX_TOOL_RESULT],
                         "tool_calls": calls})
        for index, call in enumerate(calls):
            if index >= MAX_CALLS_PER_TURN:
                result = {"error": f"at most {MAX_CALLS_PER_TURN} tool calls a turn"}
            elif clock() >= deadline:
                result = {"error": "out of time: the call was not run"}
            else:
                result = use_tool(call, workspace, run_tests, events)
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": json.dumps(result)[:MAX_TOOL_RESULT]})
        trim(messages)
    if clock() >= deadline:
        return failed(events, f"out of time after {steps} model turns "
                              f"(max_minutes {bounds.max_minutes:g})", steps)
    tests = run_tests(workspace.root)
    events("test", {"passed": tests.passed, "reason": tests.reason, "final": True})
    if not tests.passed:
        bound = f" after {steps} model turns (max_steps {bounds.max_steps})" \
            if steps >= bounds.max_steps else ""
        return failed(events, f"the tests do not pass ({tests.reason}){bound}: "
                              f"{last_line(tests.output)}", steps)
    try:
        return propose(task, git, proposals, events, summary, steps,
                       sorted(workspace.written))
    except (RepoLoopError, OSError) as exc:
        return failed(events, str(exc), steps)
    except Exception as exc:  # the forge client's typed errors: the item fails with them
        return failed(events, f"the forge refused: {str(exc)[:300]}", steps)


def propose(task: Task, git: Git, proposals: Proposals, events: Events, summary: str,
            steps: int, written: list[str]) -> Outcome:
    """Commit the files the model wrote (``written``) on the item's branch, push that branch
    (never forced), open (or find) its pull request and comment the link on the issue.
    Nothing else in the tree is committed: not the test command's caches or output, not a
    file the repository ignores."""
    if written:  # tracked ones (even if since removed) and new ones the repository keeps
        tracked = git("ls-files", "-z", "--", *written)
        new = git("ls-files", "-z", "--others", "--exclude-standard", "--", *written)
        taken = sorted({path for path in (tracked + new).split("\0") if path})
        if taken:
            git("add", "--all", "--", *taken)
    staged = git("diff", "--cached", "--name-only", "-z").split("\0")
    staged = [path for path in staged if path]
    if staged:
        git("commit", "--quiet", "--no-verify", "-m",
            f"{task.title[:60]} (#{task.issue_number})\n\n{summary[:2000]}\n\n"
            f"Work item {task.item_id}: {task.issue_url}")
    ahead = git("rev-list", "--count", f"origin/{task.base}..HEAD").strip()
    if ahead in ("", "0"):
        return failed(events, "the tests pass but nothing was changed: no pull request",
                      steps)
    git("push", "--quiet", "--porcelain", "origin", f"HEAD:refs/heads/{task.branch}",
        network=True)
    events("pushed", {"branch": task.branch, "files": staged[:50]})
    body = (f"For #{task.issue_number}: {task.issue_url}\n\n{summary[:4000]}\n\n"
            f"Made by a Sovereign Fleet agent in {steps} model turns; the tests pass. "
            "A person reviews and merges; the agent never does.")
    url = proposals.propose(task.branch, task.base, f"{task.title[:200]}", body)
    link = f"A pull request for this issue: {url}"
    if not proposals.commented(task.issue_number, link):  # once, also when resumed
        proposals.comment(task.issue_number, link)
    events("proposed", {"pr_url": url, "branch": task.branch})
    return Outcome("proposed", "the tests pass; a person reviews the pull request", url, steps)


def failed(events: Events, reason: str, steps: int) -> Outcome:
    events("failed", {"reason": reason})
    return Outcome("failed", reason, None, steps)


def well_formed(calls: Any) -> list[dict[str, Any]]:
    """The model's tool calls rebuilt from their parts (OpenAI format), each with a string id
    and name and string arguments; anything else the model sent (not a list, not objects) is
    left out, so nothing it shaped goes back to the provider as is."""
    kept: list[dict[str, Any]] = []
    for index, call in enumerate(calls if isinstance(calls, list) else []):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        arguments = function.get("arguments") if isinstance(function, dict) else None
        ident = call.get("id")
        kept.append({"id": ident if isinstance(ident, str) and len(ident) <= 100
                     else f"call-{index}", "type": "function",
                     "function": {"name": call_name(call),
                                  "arguments": arguments if isinstance(arguments, str)
                                  and len(arguments) <= MAX_ARGUMENTS else "{}"}})
    return kept


def trim(messages: list[dict[str, Any]]) -> None:
    """Drop the oldest tool results while the conversation is over :data:`MAX_CONVERSATION`
    characters (the newest stay whole)."""
    total = sum(len(str(message.get("content") or "")) for message in messages)
    for message in messages:
        if total <= MAX_CONVERSATION:
            return
        if message.get("role") == "tool" and message["content"] != DROPPED:
            total -= len(message["content"]) - len(DROPPED)
            message["content"] = DROPPED


DROPPED = '{"dropped": "an older tool result, dropped to keep the conversation bounded"}'


def call_name(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[a-z_]{1,40}", name) else "?"


def use_tool(call: Any, workspace: Workspace, run_tests: RunTests,
             events: Events) -> dict[str, Any]:
    """Run one tool call; what goes back to the model (a result or the reason it was
    refused)."""
    name = call_name(call)
    function = call.get("function") if isinstance(call, dict) else None
    raw = function.get("arguments") if isinstance(function, dict) else None
    try:
        args = json.loads(raw or "{}") if isinstance(raw, str) and len(raw) <= MAX_ARGUMENTS \
            else None
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        args = None
    if not isinstance(args, dict):
        events("tool", {"tool": name, "ok": False})
        return {"error": "the arguments are not a JSON object"}
    path = args.get("path", "")
    try:
        if name == "list_files":
            result: dict[str, Any] = {"files": workspace.list_files(path or "")}
        elif name == "read_file":
            result = {"content": workspace.read_file(path)}
        elif name == "write_file":
            result = {"written": workspace.write_file(path, args.get("content"))}
        elif name == "run_tests":
            run = run_tests(workspace.root)
            events("test", {"passed": run.passed, "reason": run.reason})
            result = {"passed": run.passed, "reason": run.reason,
                      "output": run.output[-MAX_TOOL_RESULT // 2:]}
        else:
            raise WorkspaceError(f"no tool {name!r}: use list_files, read_file, write_file "
                                 "or run_tests")
    except WorkspaceError as exc:
        events("tool", {"tool": name, "ok": False, "path": str(path)[:200]})
        return {"error": str(exc)}
    except OSError as exc:
        events("tool", {"tool": name, "ok": False, "path": str(path)[:200]})
        return {"error": f"{exc.strerror or exc}"}
    if name != "run_tests":
        events("tool", {"tool": name, "ok": True, "path": str(path)[:200]})
    return result


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def basic_auth_header(forge: str, token: str) -> str:
    """The ``Authorization`` header git sends to the forge's git server for ``token``, as
    each documents it: GitHub ``x-access-token``, GitLab ``oauth2``, Gitea the token as the
    password."""
    user = {"github": "x-access-token", "gitlab": "oauth2"}.get(forge, "fleet")
    pair = base64.b64encode(f"{user}:{token}".encode()).decode()
    return f"Authorization: Basic {pair}"


def workspace_root(state_dir: Path, item_id: str) -> Path:
    """Where an item's work tree lives under the agent's state dir (``work/ITEM_ID``: what
    the sandbox makes writable)."""
    if not re.fullmatch(r"w-[0-9a-f]{12}", item_id):
        raise RepoLoopError(f"{item_id[:40]!r} is not a work item id")
    return state_dir / "work" / item_id


