"""An outside tester's attacks on the rollout's stage hand-off: what each stage's pyinfra
process is asked to deploy, and how the controller and a waiting stage behave when the other
one is killed."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploys import gate, lock
from fleet.control import records, rollout
from fleet.control import rollout_events as ev
from fleet.control.records import RECORDS_ENV, RUN_ID_ENV, RecordWatch, load_record
from fleet.control.rollout import (
    RolloutOptions,
    limit_pattern,
    plan_waves,
    pyinfra_command,
    select,
)
from fleet.core.errors import DeployError
from fleet.core.registry import NAME_RE, load_registry
from tests.deploy.fake_stage import HANG_ENV, TRACE_ENV, script_rollout
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

CLASHING = """\
fleet:
  name: clash
wizards:
  worker: {host: 127.0.0.2, ssh_port: 1, gateway_port: 8601, role: orchestrator,
           model: m}
  inventory: {host: 127.0.0.5, ssh_port: 1, gateway_port: 8604, role: orchestrator,
              model: m}
  code: {host: 127.0.0.3, ssh_port: 1, gateway_port: 8602, role: worker, model: m}
  w2: {host: 127.0.0.4, ssh_port: 1, gateway_port: 8603, role: worker, model: m,
       capabilities: [code]}
"""


def tried_hosts(registry: Path, hosts: list[str]) -> set[str]:
    """The hosts the real pyinfra CLI tries to reach for a rollout stage of ``hosts`` (an
    empty deploy file; every connection is refused on port 1, so nothing is deployed)."""
    deploy = registry.parent / "nothing.py"
    deploy.write_text("")
    command = [str(part) if part != "deploy.py" else str(deploy)
               for part in pyinfra_command(hosts, RolloutOptions())]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "FLEET_REGISTRY": str(registry),
                                            "PYINFRA_PROGRESS": "off"})
    out = done.stdout + done.stderr
    return set(re.findall(r"\[([a-z][a-z0-9-]*)\]\s+Could not connect", out))


def test_each_stage_reaches_its_own_hosts_whatever_groups_share_their_names(
        tmp_path: Path) -> None:
    """pyinfra reads ``--limit NAME`` as a group first: the canary ``worker`` (an
    orchestrator) would have its stage, which has no gate, deploy every worker before any
    verdict; ``inventory`` every host; ``code`` the capability group's ``w2``, never itself.
    Each stage tries its own hosts only."""
    path = tmp_path / "registry.yaml"
    path.write_text(CLASHING)
    registry = load_registry(path)
    stages = [hosts for _, hosts in plan_waves(registry, select(registry, ()), 1)]
    assert stages == [["worker", "inventory"], ["code"], ["w2"]]
    assert tried_hosts(path, ["worker"]) == {"worker"}
    assert tried_hosts(path, ["worker", "inventory"]) == {"worker", "inventory"}
    assert tried_hosts(path, ["code"]) == {"code"}


agent_names = st.from_regex(NAME_RE, fullmatch=True)


@given(name=agent_names, others=st.lists(agent_names, max_size=8))
def test_a_limit_pattern_names_no_group_and_globs_its_agent_only(
        name: str, others: list[str]) -> None:
    """pyinfra's rule for ``--limit``: a group of that name, else the hosts the glob matches.
    No inventory group is named so (groups: roles, ``all``, ``inventory``, capabilities made
    of letters, digits, '_' and '-'), and the glob matches ``name`` and no other agent."""
    pattern = limit_pattern(name)
    assert not re.fullmatch(r"[A-Za-z0-9_-]+", pattern)
    assert [other for other in {name, *others} if fnmatch.fnmatchcase(other, pattern)] == [name]


@pytest.mark.parametrize("bad", ["", "*", "a*", "[a]", "A", "a b", "w\n"])
def test_a_limit_pattern_is_only_made_of_an_agent_name(bad: str) -> None:
    with pytest.raises(DeployError, match="is not an agent name"):
        limit_pattern(bad)


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fleet repository whose stages are ``fake_stage`` processes, the canary's hanging
    until killed; the folder they trace into is yielded. Every stage process still running
    at the end (by the pid it wrote) is killed."""
    (tmp_path / "inventory.py").write_text("")
    (tmp_path / "deploy.py").write_text("")
    folder = tmp_path / "trace"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "records"))
    monkeypatch.setenv(RUN_ID_ENV, "run-k")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    monkeypatch.setenv(TRACE_ENV, str(folder))
    monkeypatch.setenv(HANG_ENV, "0")
    yield folder
    if (folder / "1.pid").exists():  # the canary started too: its pid comes at once
        with contextlib.suppress(AssertionError):
            wait_for(lambda: (folder / "0.pid").exists(), 10)
    for pid_file in folder.glob("*.pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def at_gate(trace: Path) -> None:
    """Wait until the canary's process started (hanging) and stage 1's waits at its gate."""
    wait_for(lambda: (trace / "0.pid").exists() and (trace / "1.waiting").exists(), 60,
             "the canary started and stage 1 at its gate")


def gone(pid: int) -> bool:
    """The process ended (reaped, or a zombie its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_9(controller: subprocess.Popen[bytes]) -> None:
    controller.send_signal(signal.SIGKILL)
    controller.wait()


def ctrl_c(controller: subprocess.Popen[bytes]) -> None:
    """The terminal's Ctrl-C: SIGINT to the foreground process group (the controller's)."""
    os.killpg(controller.pid, signal.SIGINT)
    assert controller.wait(timeout=30) != 0


@pytest.mark.parametrize("stop", [kill_9, ctrl_c])
def test_a_controller_stopped_while_a_stage_waits_at_its_gate_skips_its_hosts_and_unlocks(
        trace: Path, stop: Callable[[subprocess.Popen[bytes]], None]) -> None:
    """``fleet deploy`` is killed (SIGKILL), or stopped by a Ctrl-C, while the canary deploys
    and the first batch waits at its gate: the batch's host is recorded skipped at once (the
    verdict pipe ended), its deploy lock released, and its process ends; nothing later
    starts. A Ctrl-C reaches the controller only (each stage runs in a session of its own),
    which stops the stages in order: it killed the waiting stage, locks held, before."""
    controller = subprocess.Popen(
        [sys.executable, "-m", "tests.deploy.fake_stage", "--cli", "--registry",
         str(REPO / "registry.yaml"), "deploy", "--batch", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # the terminal's foreground group, of the controller
    try:
        at_gate(trace)
        watch = RecordWatch("run-k")
        assert "bezalel" not in watch.read().get("hosts", {})
        stage = int((trace / "1.pid").read_text())
        stopped = time.monotonic()
        stop(controller)
        entry = wait_for(lambda: watch.read().get("hosts", {}).get("bezalel"), 10,
                         "bezalel's entry")
        assert time.monotonic() - stopped < 5
        assert entry == {"status": "skipped", "reason": gate.GONE}
        released = trace / "bezalel.released"  # right after the entry (gate.gate_passed)
        wait_for(lambda: released.exists(), 10, "bezalel's lock released")
        command = released.read_text()
        assert f" = {socket.gethostname()}:{stage}." in command
        assert command.endswith(f":run-k ] && rm -rf {lock.LOCK_DIR}; true; }}")
        wait_for(lambda: gone(stage), 10, "stage 1's process to end")
        assert watch.read().get("verdicts", {}) == {}
        assert not (trace / "2.pid").exists()
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()


@pytest.mark.parametrize(("allowed", "status", "batch"), [(0, "failed", "skipped"),
                                                           (1, "degraded", "ok")])
def test_a_stage_process_killed_mid_run_is_judged_failed_by_the_rules(
        trace: Path, allowed: int, status: str, batch: str) -> None:
    """The canary's process is killed (SIGKILL) mid-run, the first batch waiting at its gate:
    the controller does not hang; it judges the canary failed (no audit record), then stops
    the rollout (the batch skipped) or, with ``--max-failures 1``, lets the batch deploy."""
    script_rollout()
    result: dict[str, rollout.RolloutResult] = {}

    def deploy() -> None:
        result["done"] = rollout.deploy_fleet(
            load_registry(REPO / "registry.yaml"),
            RolloutOptions(batch=1, max_failures=allowed), lambda line: None)

    runner = threading.Thread(target=deploy, daemon=True)
    runner.start()
    at_gate(trace)
    os.kill(int((trace / "0.pid").read_text()), signal.SIGKILL)
    runner.join(timeout=60)
    assert not runner.is_alive(), "the controller hangs"
    record = load_record("run-k")
    assert record["status"] == status
    assert record["hosts"]["ezra-primary"]["status"] == "failed"
    assert record["hosts"]["ezra-primary"]["reason"] == rollout.NO_ENTRY
    assert record["verdicts"]["0"] == {"go": bool(allowed), "failures": 1, "allowed": allowed}
    assert record["hosts"]["bezalel"]["status"] == batch
    assert record["stages"][0]["exit_code"] == -signal.SIGKILL
    released = (trace / "bezalel.released").exists()
    assert released is (batch == "skipped")
    if released:  # the lock the stage's process took (its owner names that process)
        command = (trace / "bezalel.released").read_text()
        assert f" = {socket.gethostname()}:{(trace / '1.pid').read_text()}." in command
        assert command.endswith(f":run-k ] && rm -rf {lock.LOCK_DIR}; true; }}")


pipe_lines = st.lists(st.one_of(
    st.integers(0, 999999).map(lambda n: b"%d" % n),  # a note
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),  # garbage, invalid UTF-8
    st.integers(507, 520).map(lambda n: b"7" * n),  # digits around the line limit
    st.just("\ud800".encode("utf-8", "surrogatepass"))), max_size=8)  # a lone surrogate


@settings(max_examples=200, deadline=None)
@given(lines=pipe_lines, cuts=st.lists(st.integers(0, 4000), max_size=6), end=st.booleans())
def test_the_verdict_pipe_counts_the_same_however_the_reads_cut_the_lines(
        lines: list[bytes], cuts: list[int], end: bool) -> None:
    """Whatever lines come (notes, garbage, digits past the limit, a lone surrogate) and
    wherever the pipe's reads cut them, exactly the stage-number lines of at most
    :data:`~fleet.control.rollout_events.MAX_LINE` bytes count; a last line without its
    newline never does."""
    data = b"\n".join(lines) + (b"\n" if end and lines else b"")
    pipe = ev.VerdictPipe(-1)
    at = 0
    for cut in sorted({min(cut, len(data)) for cut in cuts} | {len(data)}):
        if cut > at:
            pipe._take(data[at:cut])
            at = cut
    complete = lines if end else lines[:-1]
    assert pipe.notes == sum(1 for line in complete
                             if re.fullmatch(rb"[0-9]{1,6}", line) and len(line) <= ev.MAX_LINE)
    pipe._take(b"")
    assert pipe.closed


@pytest.mark.parametrize("line", [
    b'{"host": "\\ud800", "phase": "verify"}\n',  # a lone surrogate, JSON-escaped
    b'{"host": "a", "phase": "\\udfff"}\n',
    '{"host": "a", "phase": "\ud800"}\n'.encode("utf-8", "surrogatepass"),  # raw, not UTF-8
    b'{"host": "\\u0430", "phase": "verify"}\n',  # a Cyrillic look-alike of "a"
    b'{"host": "a", "recorded": true, "phase": "verify"}\n',
    b'{"host": "a", "phase": "verify"' + b" " * 600 + b"}\n",  # longer than a line may be
    b"[" * 511 + b"\n",  # deep nesting within the limit
    b'{"host": "a", "recorded": 1e999}\n',
    b"\x00" * 40 + b"\n",
])
def test_the_phase_pipe_skips_hostile_lines_and_reads_the_next(line: bytes) -> None:
    notes = list(ev.read_notes(io.BytesIO(line + ev.recorded_line("b") + line[:-1])))
    assert notes == [ev.HostRecorded("b")]


def test_verdict_notes_twice_early_or_of_another_stage_only_make_the_gate_read_the_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 2's gate waits for the verdict on stage 1. Notes for stage 1 before its verdict
    is in the record (twice), a verdict on stage 0 and on stage 2 (another stage's), a note
    naming stage 7: the gate reads the record on each and waits on; the verdict on stage 1,
    noted as stage 0, stops it."""
    monkeypatch.setenv(RECORDS_ENV, str(tmp_path))
    monkeypatch.setenv(RUN_ID_ENV, "r-notes")
    read, write = os.pipe()
    monkeypatch.setenv(ev.VERDICT_FD_ENV, str(read))
    reads: list[int] = []
    real = gate.verdict_on

    def counted(run_id: str, stage: int) -> object:
        reads.append(stage)
        return real(run_id, stage)

    monkeypatch.setattr(gate, "verdict_on", counted)
    target = SimpleNamespace(name="b", data={}, logged=[], commands=[])
    target.log_styled = lambda text, **_: target.logged.append(text)
    target.run_shell_command = lambda command, **_: (target.commands.append(str(command)),
                                                     (True, None))[1]
    answer: list[bool] = []
    waiter = threading.Thread(target=lambda: answer.append(
        gate.gate_passed(None, target, 2, os.getppid())))  # type: ignore[arg-type]
    def note(*stages: int) -> None:
        """Write notes naming ``stages``; wait until the gate read the record again."""
        before = len(reads)
        os.write(write, b"".join(map(ev.verdict_line, stages)))
        wait_for(lambda: len(reads) > before, 10, f"a read on the notes {stages}")

    try:
        waiter.start()
        wait_for(lambda: len(reads) == 1, 10)
        note(1, 1)
        note(1)
        records.set_verdict("r-notes", 0, {"go": True, "failures": 0, "allowed": 0})
        records.set_verdict("r-notes", 2, {"go": True, "failures": 0, "allowed": 0})
        note(7)
        assert waiter.is_alive() and not answer
        records.set_verdict("r-notes", 1, {"go": False, "failures": 1, "allowed": 0})
        os.write(write, ev.verdict_line(0))
        waiter.join(timeout=10)
        assert answer == [False]
        assert set(reads) == {1}  # only the verdict on stage 1 is ever looked at
        assert records.load_record("r-notes")["hosts"]["b"]["status"] == "skipped"
        assert target.commands == [lock.release_command(lock.owner())]
    finally:
        os.close(write)
        waiter.join(timeout=10)
        os.close(read)


def test_a_controller_failing_lets_the_waiting_stage_skip_and_unlock_before_it_stops_it(
        trace: Path) -> None:
    """The controller fails (here its observer raises) while the canary deploys and the first
    batch waits at its gate: it stops the canary's process, and the batch's hosts are told
    the controller is gone (skipped, their locks released) instead of being killed at the
    gate with their nodes locked and no record of them."""
    script_rollout()

    def observe(event: ev.RolloutEvent) -> None:
        if event == ev.HostPhase("bezalel", "waiting"):
            wait_for(lambda: (trace / "0.pid").exists(), 60, "the canary's process")
            raise RuntimeError("the controller fails")

    with pytest.raises(RuntimeError, match="the controller fails"):
        rollout.deploy_fleet(load_registry(REPO / "registry.yaml"), RolloutOptions(batch=1),
                             lambda line: None, observe)
    assert gone(int((trace / "0.pid").read_text()))
    entry = load_record("run-k")["hosts"]["bezalel"]
    assert entry == {"status": "skipped", "reason": gate.GONE}
    assert (trace / "bezalel.released").read_text().endswith(
        f":run-k ] && rm -rf {lock.LOCK_DIR}; true; }}")
    assert not (trace / "2.pid").exists()


def test_a_later_stage_that_does_not_end_within_the_grace_is_killed(
        trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller fails while the first batch's process hangs before its gate: it waits
    :data:`~fleet.control.rollout.STOP_GRACE_S` for it, then kills it; it never hangs."""
    script_rollout()
    monkeypatch.setenv(HANG_ENV, "1")
    monkeypatch.setattr(rollout, "STOP_GRACE_S", 1.0)

    def observe(event: ev.RolloutEvent) -> None:
        if event == ev.HostPhase("bezalel", "preflight"):
            wait_for(lambda: (trace / "1.pid").exists(), 60, "the batch's process")
            raise RuntimeError("the controller fails")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the controller fails"):
        rollout.deploy_fleet(load_registry(REPO / "registry.yaml"), RolloutOptions(batch=1),
                             lambda line: None, observe)
    assert time.monotonic() - started < 30
    assert gone(int((trace / "1.pid").read_text()))
