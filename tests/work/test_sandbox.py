"""The sandbox's front door without systemd: a request is refused, with a clear error and
nothing run, unless it comes from the agent's uid, is small strict JSON naming a workspace of
the form ``work/w-<12 hex>`` and that workspace is a real directory of the agent's state dir;
the ``systemd-run`` command line carries every limit and the network rule; the run records
stay bounded and root's; the client reads answers strictly."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.control import render
from fleet.core.sandbox_policy import policy_for, policy_from_dict
from fleet.node.work import sandbox
from fleet.node.work.sandbox import (
    MOVED,
    MOVED_EXIT,
    WORKSPACE_RE,
    RequestRefused,
    SandboxError,
    SandboxResult,
    handle,
    open_workspace,
    parse_request,
    record,
    run_argv,
    run_tests,
    unit_outcome,
)

GOOD = "work/w-0123456789ab"
ARABIC = "".join(chr(0x660 + digit) for digit in range(10))  # Unicode digits 0-9


@pytest.mark.parametrize(("raw", "message"), [
    (b" " * 1025, "the request is longer than 1024 bytes"),
    (b"[" * 100_000 + b"]" * 100_000, "the request is longer than 1024 bytes"),
    (b"[" * 500 + b"]" * 500, 'the request is not {"workspace": "work/w-…"}'),
    (b'{"workspace": ', "the request is not JSON"),
    (b"", "the request is not one line of printable ASCII JSON"),
    (b'{"workspace": "work/w-0123456789ab"}\n{}', "the request is not one line of printable "
                                                  "ASCII JSON"),
    (('{"workspace": "work/w-' + ARABIC + 'ab"}').encode(),
     "the request is not one line of printable ASCII JSON"),
    (b'{"workspace": "work/w-\\u0660\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666\\u0667\\u0668'
     b'\\u0669ab"}', f"workspace 'work/w-{ARABIC}ab' is not work/w- and 12 lowercase "
                     "hex digits, relative to the agent's state dir"),
    (b'{"workspace": "work/w-0123456789a\\udc80"}',
     "workspace 'work/w-0123456789a\\udc80' is not work/w- and 12 lowercase hex digits, "
     "relative to the agent's state dir"),
    (b'{"workspace": "work/w-0123456789a\xed\xb2\x80"}',
     "the request is not one line of printable ASCII JSON"),
    (b'{"workspace": "work/../../../etc"}', "workspace 'work/../../../etc' is not work/w- and "
                                            "12 lowercase hex digits, relative to the agent's "
                                            "state dir"),
    (b'{"workspace": "/var/lib/fleet/a/work/w-0123456789ab"}',
     "workspace '/var/lib/fleet/a/work/w-0123456789ab' is not work/w- and 12 lowercase hex "
     "digits, relative to the agent's state dir"),
    (b'{"workspace": "work/w-0123456789AB"}', "workspace 'work/w-0123456789AB' is not work/w- "
                                              "and 12 lowercase hex digits, relative to the "
                                              "agent's state dir"),
    (b'{"workspace": ["work/w-0123456789ab"]}', "workspace \"['work/w-0123456789ab']\" is not "
                                                "work/w- and 12 lowercase hex digits, relative "
                                                "to the agent's state dir"),
    (b'{"workspace": "work/w-0123456789ab", "argv": ["sh"]}',
     'the request is not {"workspace": "work/w-…"}'),
    (b'{"workspace": "work/w-0123456789ab\\n"}', "workspace 'work/w-0123456789ab\\n' is not "
                                                "work/w- and 12 lowercase hex digits, relative "
                                                "to the agent's state dir"),
])
def test_bad_requests_are_refused_with_a_clear_error(raw: bytes, message: str) -> None:
    with pytest.raises(RequestRefused) as raised:
        parse_request(raw)
    assert str(raised.value) == message


def test_a_good_request_names_its_workspace() -> None:
    assert parse_request(b'{"workspace": "work/w-0123456789ab"}\n') == GOOD


@given(st.binary(max_size=1200) | st.text(max_size=300).map(
    lambda text: json.dumps({"workspace": text}).encode()))
def test_any_request_is_a_strict_workspace_or_refused(raw: bytes) -> None:
    try:
        workspace = parse_request(raw)
    except RequestRefused:
        return
    assert WORKSPACE_RE.fullmatch(workspace) and ".." not in workspace


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """An agent's state dir with one workspace (the tests' own uid is the agent's)."""
    (tmp_path / "agent" / "work" / "w-0123456789ab").mkdir(parents=True)
    return tmp_path / "agent"


def test_a_real_workspace_resolves_to_its_path(state: Path) -> None:
    checked = (state / GOOD).stat()
    assert open_workspace(str(state), GOOD, os.getuid()) == (
        str(state / GOOD), f"{checked.st_dev}:{checked.st_ino}")


@pytest.mark.parametrize("swap", ["symlink", "another directory"])
def test_a_workspace_swapped_after_its_check_runs_nothing(
        state: Path, tmp_path: Path, swap: str) -> None:
    """Outside attack r36 (F1): the agent renamed its checked workspace and put a symlink (or
    another directory) in its place before systemd-run, so systemd would have bound the
    target into the unit. The unit's first step checks it is the directory checked, and
    refuses before any of the repository's code runs."""
    path, identity = open_workspace(str(state), GOOD, os.getuid())
    marker = tmp_path / "ran"
    os.rename(path, tmp_path / "moved")
    if swap == "symlink":
        (tmp_path / "root-only").mkdir()
        Path(path).symlink_to(tmp_path / "root-only")
    else:
        Path(path).mkdir()
    done = subprocess.run([sys.executable, "-m", "fleet.node.work.sandbox", "enter", identity,
                           "--", "touch", str(marker)], cwd=path, capture_output=True,
                          text=True, check=False)
    assert done.returncode == MOVED_EXIT and not marker.exists()
    assert done.stderr == f"fleet sandbox: {MOVED}\n"
    kept = subprocess.run([sys.executable, "-m", "fleet.node.work.sandbox", "enter", identity,
                           "--", "touch", str(marker)], cwd=tmp_path / "moved", check=False)
    assert kept.returncode == 0 and marker.exists()  # the directory checked: it runs


@pytest.mark.parametrize("escape", ["workspace", "work"])
def test_a_symlink_out_of_the_state_dir_is_refused(state: Path, tmp_path: Path,
                                                   escape: str) -> None:
    outside = tmp_path / "outside"
    (outside / "w-0123456789ab").mkdir(parents=True)
    link = state / "work" / "w-0123456789ab" if escape == "workspace" else state / "work"
    os.rename(link, tmp_path / "moved")
    link.symlink_to(outside / "w-0123456789ab" if escape == "workspace" else outside)
    with pytest.raises(RequestRefused, match="is not a directory of the agent's"):
        open_workspace(str(state), GOOD, os.getuid())


def test_a_workspace_not_the_agents_is_refused(state: Path) -> None:
    with pytest.raises(RequestRefused, match="work is not the agent's"):
        open_workspace(str(state), GOOD, os.getuid() + 1)


def test_a_missing_workspace_is_refused(state: Path) -> None:
    with pytest.raises(RequestRefused, match="w-000000000000 is not a directory"):
        open_workspace(str(state), "work/w-000000000000", os.getuid())


@pytest.fixture
def never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*args: Any) -> None:
        raise AssertionError("a refused request ran something")
    monkeypatch.setattr(sandbox, "run_sandboxed", run)


def ask(request: bytes, uid: int, state: Path) -> SandboxResult:
    """``request`` through :func:`handle` over a socket pair, the caller being this process."""
    front, caller = socket.socketpair()
    with front, caller:
        caller.sendall(request)
        caller.shutdown(socket.SHUT_WR)
        return handle(front, "agent", uid, state_root=str(state.parent),
                      etc_root=str(state.parent / "etc"))


@pytest.mark.usefixtures("never_runs")
def test_a_caller_that_is_not_the_agent_is_refused_unread(state: Path) -> None:
    result = ask(b'{"workspace": "work/w-0123456789ab"}', os.getuid() + 1, state)
    assert (result.status, result.error) == (
        "refused", f"uid {os.getuid()} is not agent's (uid {os.getuid() + 1})")


@pytest.mark.usefixtures("never_runs")
@pytest.mark.parametrize(("request_bytes", "error"), [
    (b"{" * 5000, "the request is longer than 1024 bytes"),
    (b'{"workspace": "work/../w-0123456789ab"}', "workspace 'work/../w-0123456789ab' is not "
                                                 "work/w- and 12 lowercase hex digits, "
                                                 "relative to the agent's state dir"),
    (b'{"workspace": "work/w-0123456789ab"}', "the sandbox policy cannot be read: [Errno 2] "
                                              "No such file or directory: '{etc}/agent/"
                                              "sandbox.json'"),
])
def test_refused_requests_run_nothing(state: Path, request_bytes: bytes, error: str) -> None:
    result = ask(request_bytes, os.getuid(), state)
    assert (result.status, result.error) == ("refused", error.format(etc=state.parent / "etc"))


def test_a_policy_anyone_but_root_could_change_is_refused(state: Path,
                                                          never_runs: None) -> None:
    etc = state.parent / "etc" / "agent"
    etc.mkdir(parents=True)
    (etc / "sandbox.json").write_text("{}")
    (etc / "sandbox.json").chmod(0o666)
    result = ask(b'{"workspace": "work/w-0123456789ab"}', os.getuid(), state)
    assert result.error == f"{etc}/sandbox.json is not root's own file"


def test_a_refusal_reaches_a_caller_that_sent_more_than_was_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, never_runs: None) -> None:
    """The front door answers before it closes, and reads the rest first: a caller whose
    request was refused unread gets the refusal, not a reset connection."""
    monkeypatch.setattr(pwd, "getpwnam", lambda name: type("P", (), {"pw_uid": 1})())
    front, caller = socket.socketpair()
    with front, caller:
        caller.sendall(b"x" * 5000)
        caller.shutdown(socket.SHUT_WR)
        sandbox.serve("agent", front, state_root=str(tmp_path), etc_root=str(tmp_path))
        front.close()
        answer = json.loads(caller.recv(65536))
    assert (answer["status"], answer["error"]) == ("refused", f"uid {os.getuid()} is not "
                                                              "agent's (uid 1)")


def test_the_command_line_carries_every_limit_and_the_network_rule() -> None:
    policy = policy_for(["sh", "run-tests.sh"], ["http://192.0.2.5:3000/x"])
    argv = run_argv(policy, "bezalel", "fleet-sandbox-bezalel-0a.service", "/w", nproc_limit=99,
                    firewall=True)
    props = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-p"]
    assert argv[:6] == ["/usr/bin/systemd-run", "--wait", "--pipe", "--quiet", "--unit",
                        "fleet-sandbox-bezalel-0a.service"]
    assert argv[argv.index("--") + 1:] == [sys.executable, "-m", "fleet.node.work.sandbox",
                                           "enter", "", "--", "sh", "run-tests.sh"]
    assert {"User=bezalel", "Group=bezalel", "WorkingDirectory=/w", "CPUQuota=100%",
            "MemoryMax=512M", "MemorySwapMax=0", "TasksMax=64", "RuntimeMaxSec=600",
            "LimitNPROC=99", "LimitDATA=1024M", "TemporaryFileSystem=/var/lib/fleet:ro",
            "TemporaryFileSystem=/etc/fleet:ro", "BindPaths=/w", "ReadWritePaths=/w",
            "IPAddressDeny=any", "IPAddressAllow=192.0.2.5", "ProtectSystem=strict",
            "PrivateTmp=yes", "PrivateDevices=yes", "NoNewPrivileges=yes",
            "ProtectHome=yes"} <= set(props)
    assert "PrivateNetwork=yes" not in props
    no_firewall = run_argv(policy, "b", "u", "/w", nproc_limit=9, firewall=False)
    assert "PrivateNetwork=yes" in no_firewall  # no BPF: no network rather than all of it
    assert "PrivateNetwork=yes" in run_argv(policy_for(), "b", "u", "/w", nproc_limit=9,
                                            firewall=True)


@pytest.mark.parametrize(("shown", "returncode", "outcome"), [
    ("LoadState=not-found\nResult=success\n", 0, ("passed", 0)),
    ("LoadState=not-found\nResult=success\n", 1, ("failed", 1)),  # never started
    ("LoadState=loaded\nResult=exit-code\nExecMainCode=1\nExecMainStatus=3\n", 3, ("failed", 3)),
    ("LoadState=loaded\nResult=timeout\nExecMainCode=2\nExecMainStatus=15\n", 1,
     ("timeout", None)),
    ("LoadState=loaded\nResult=oom-kill\nExecMainCode=2\nExecMainStatus=9\n", 1,
     ("memory", None)),
    ("LoadState=loaded\nResult=signal\nExecMainCode=2\nExecMainStatus=9\n", 1,
     ("killed", None)),
])
def test_the_reason_comes_from_systemd_and_the_unit_is_reset(
        monkeypatch: pytest.MonkeyPatch, shown: str, returncode: int,
        outcome: tuple[str, int | None]) -> None:
    calls: list[tuple[str, ...]] = []

    def systemctl(*args: str) -> str:
        calls.append(args)
        return shown if args[0] == "show" else ""
    monkeypatch.setattr(sandbox, "_systemctl", systemctl)
    assert unit_outcome("u.service", returncode) == outcome
    assert (("reset-failed", "u.service") in calls) is ("loaded" in shown)


def test_records_stay_bounded_and_refuse_a_link(tmp_path: Path) -> None:
    uid = os.getuid()
    for number in range(200):
        record(str(tmp_path), {"n": number, "pad": "x" * 50}, max_bytes=4096, owner=uid)
    lines = (tmp_path / sandbox.RECORDS_FILE).read_text().splitlines()
    assert (tmp_path / sandbox.RECORDS_FILE).stat().st_size <= 4096
    assert json.loads(lines[-1])["n"] == 199
    assert [json.loads(line)["n"] for line in lines] == list(range(200 - len(lines), 200))
    (tmp_path / sandbox.RECORDS_FILE).unlink()
    (tmp_path / sandbox.RECORDS_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        record(str(tmp_path), {"n": 0}, owner=uid)
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / sandbox.RECORDS_FILE).unlink()
    (tmp_path / "target").write_text("")
    os.link(tmp_path / "target", tmp_path / sandbox.RECORDS_FILE)
    with pytest.raises(OSError, match="is not root's own regular file"):
        record(str(tmp_path), {"n": 0}, owner=uid)
    assert (tmp_path / "target").read_text() == ""


@pytest.fixture
def front_door(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A Unix socket answering each connection with the next of the answers put in the list."""
    path = str(tmp_path / "s.sock")
    answers: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(2048)
                conn.sendall(answers.pop(0))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers
    server.close()


def test_the_client_returns_the_result(front_door: tuple[str, list[bytes]]) -> None:
    path, answers = front_door
    result = SandboxResult("failed", 1, 0.5, "E  assert 1 == 2\n", "u", "none", "")
    answers.append(json.dumps(result.to_dict()).encode())
    assert run_tests(GOOD, agent="bezalel", socket_path=path, timeout=5) == result


@pytest.mark.parametrize(("answer", "error"), [
    (b'{"status": "refused", "exit_status": null, "duration_s": 0, "output": "", "unit": "", '
     b'"network": "", "error": "uid 0 is not bezalel\'s"}',
     "the sandbox refused the run: uid 0 is not bezalel's"),
    (b"", "answered no result (busy or stopped)"),
    (b'{"status": "passed"}', "the sandbox answered \"{'status': 'passed'}\", not a result"),
    (b'{"status": "won", "exit_status": 0, "duration_s": 0, "output": "", "unit": "", '
     b'"network": "", "error": ""}', "the sandbox's answer has an unknown status 'won'"),
])
def test_the_client_refuses_what_is_not_a_result(front_door: tuple[str, list[bytes]],
                                                 answer: bytes, error: str) -> None:
    path, answers = front_door
    answers.append(answer)
    with pytest.raises(SandboxError) as raised:
        run_tests(GOOD, agent="bezalel", socket_path=path, timeout=5)
    assert error in str(raised.value)


def test_the_client_without_a_sandbox_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="could not be reached"):
        run_tests(GOOD, agent="bezalel", socket_path=str(tmp_path / "none.sock"), timeout=5)
    with pytest.raises(SandboxError, match="no agent to run tests for"):
        run_tests(GOOD, agent="Not An Agent")


def test_the_policy_file_is_read_when_it_is_roots(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the policy file must be root's")
    policy = policy_from_dict({"argv": ["make", "test"], "limits": {"tasks_max": 8}})
    (tmp_path / "sandbox.json").write_text(render.config_json(policy.to_dict()))
    assert sandbox.load_policy(str(tmp_path)) == policy
