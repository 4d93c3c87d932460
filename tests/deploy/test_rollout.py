"""Fast tests of the rollout's pure parts: stages, the pyinfra call, verdicts and the gate,
and the typed run record (where it lives, its mode, run ids)."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deploys import gate
from deploys.gate import wait_for_verdict
from fleet.control import records
from fleet.control import rollout_events as ev
from fleet.control.rollout import (
    RolloutOptions,
    final_outcome,
    plan_waves,
    project_dir,
    pyinfra_command,
    select,
)
from fleet.core.errors import DeployError
from fleet.core.registry import load_registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry():
    return load_registry(REPO / "registry.yaml")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run id whose record lives under ``tmp_path``."""
    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path))
    monkeypatch.setenv(records.RUN_ID_ENV, "r1")
    return "r1"


def stages(registry, names, batch) -> list[list[str]]:
    return [hosts for _, hosts in plan_waves(registry, names, batch)]


def test_canary_first_then_batches(registry) -> None:
    names = select(registry, ())
    assert stages(registry, names, None) == [["ezra-primary"], ["bezalel", "allegro"]]
    assert stages(registry, names, 1) == [["ezra-primary"], ["bezalel"], ["allegro"]]
    assert stages(registry, select(registry, ("worker",)), None) == [["bezalel", "allegro"]]


def test_limit_names_unknown_values(registry) -> None:
    with pytest.raises(DeployError, match="--limit 'nope' matches no agent or group"):
        select(registry, ("nope",))


def test_each_stage_is_a_plain_pyinfra_cli_call() -> None:
    command = pyinfra_command(["a", "b"], RolloutOptions(dry=True, diff=True))
    assert command[1:] == ["-m", "fleet.control.pyinfra_launcher", "inventory.py", "deploy.py",
                           "--limit", "[a]", "--limit", "[b]", "--dry", "--diff"]
    command = pyinfra_command(["b"], RolloutOptions(), stage=2)
    assert command[1:] == ["-m", "fleet.control.pyinfra_launcher", "-y", "inventory.py",
                           "deploy.py",
                           "--limit", "[b]", "--data", "rollout_stage=2",
                           "--data", f"rollout_controller={os.getpid()}"]


def test_rollback_release_is_passed_as_a_json_string() -> None:
    """pyinfra reads ``--data`` values as numbers when they look like one: a release id made
    of digits must stay a string."""
    command = pyinfra_command(["a"], RolloutOptions(action="rollback", rollback_to="012345"))
    assert command[-4:] == ["--data", "action=rollback", "--data", 'rollback_to="012345"']


def test_project_dir_must_hold_the_deploy(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeployError, match=r"has no inventory\.py or deploy\.py"):
        project_dir()
    monkeypatch.chdir(REPO)
    assert project_dir() == REPO


def test_records_go_to_the_working_directory(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(records.RECORDS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    records.update_run("r2", status="ok")
    path = tmp_path / "records" / "r2.json"
    assert records.load_record("r2")["status"] == "ok"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x\n", "-rf", "é", "a" * 129])
def test_run_ids_are_safe_file_names(bad: str) -> None:
    with pytest.raises(records.RecordError, match="is not valid"):
        records.record_path(bad)


def test_a_stage_is_judged_once_every_host_is_final(run: str) -> None:
    assert final_outcome(run, ["a", "b"], ended=False) is None
    records.update_host(run, "a", {"status": "ok"})
    assert final_outcome(run, ["a", "b"], ended=False) is None
    records.update_host(run, "b", {"status": "rolled_back"})
    assert final_outcome(run, ["a", "b"], ended=False) == {"a": "ok", "b": "rolled_back"}


def test_a_host_without_an_entry_failed_when_its_process_ended(run: str) -> None:
    records.update_host(run, "a", {"status": "ok"})
    assert final_outcome(run, ["a", "b"], ended=True) == {"a": "ok", "b": "failed"}
    assert "no audit record" in records.load_record(run)["hosts"]["b"]["reason"]


def host(name: str) -> Any:
    logged: list[str] = []
    return SimpleNamespace(name=name, logged=logged,
                           log_styled=lambda text, **_: logged.append(text))


def test_gate_waits_for_the_verdict_then_goes_on(run: str) -> None:
    target = host("b")
    timer = threading.Timer(0.2, records.set_verdict, (run, 0, {
        "go": True, "failures": 0, "allowed": 0}))
    timer.start()
    started = time.monotonic()
    assert wait_for_verdict(None, target, 1, os.getppid()) is True  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.15
    assert "b" not in records.load_record(run).get("hosts", {})


def test_gate_skips_the_host_when_earlier_stages_failed(run: str) -> None:
    records.set_verdict(run, 0, {"go": True, "failures": 0, "allowed": 1})
    records.set_verdict(run, 1, {"go": False, "failures": 2, "allowed": 1})
    target = host("c")
    assert wait_for_verdict(None, target, 2, os.getppid()) is False  # type: ignore[arg-type]
    entry = records.load_record(run)["hosts"]["c"]
    assert entry == {"status": "skipped", "reason": "not deployed: 2 host(s) of earlier "
                                                     "rollout stages failed (allowed: 1)"}
    assert target.logged == [entry["reason"]]


def test_without_a_verdict_pipe_the_gate_gives_up_when_the_controller_is_gone(
        run: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ev.VERDICT_FD_ENV, raising=False)
    target = host("d")
    assert wait_for_verdict(None, target, 1, 1) is False  # type: ignore[arg-type]
    assert "the fleet deploy that started this stage is gone" in \
        records.load_record(run)["hosts"]["d"]["reason"]


@pytest.fixture
def verdict_fd(monkeypatch: pytest.MonkeyPatch):
    """This process as a later stage: ``$FLEET_VERDICT_FD`` is a pipe's read end; the write
    end (the controller's) is yielded."""
    read, write = os.pipe()
    monkeypatch.setenv(ev.VERDICT_FD_ENV, str(read))
    yield write
    for fd in (read, write):
        with contextlib.suppress(OSError):  # the test closed it
            os.close(fd)


@pytest.fixture
def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each gate read the record (:func:`deploys.gate.verdict_on`)."""
    reads: list[float] = []
    real = gate.verdict_on

    def counted(run_id: str, stage: int) -> records.Verdict | None:
        reads.append(time.monotonic())
        return real(run_id, stage)

    monkeypatch.setattr(gate, "verdict_on", counted)
    return reads


def waiting_hosts(names: str, stage: int = 1) -> tuple[list[threading.Thread], dict[str, Any]]:
    """One thread per host name waiting at the gate of ``stage`` (as pyinfra's greenlets
    do); the dict gets each host's answer and when it came."""
    answers: dict[str, Any] = {}

    def wait(name: str) -> None:
        answer = wait_for_verdict(None, host(name), stage, os.getppid())  # type: ignore[arg-type]
        answers[name] = (answer, time.monotonic())

    threads = [threading.Thread(target=wait, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    return threads, answers


def until_read(reads: list[float], count: int) -> None:
    """Wait (at most 10 s) until the gates read the record ``count`` times: they all wait."""
    deadline = time.monotonic() + 10
    while len(reads) < count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_the_gate_wakes_on_the_verdict_note_without_polling(
        run: str, verdict_fd: int, record_reads: list[float]) -> None:
    """Three hosts of a later stage wait on one verdict pipe: each reads the record once
    before it waits and once after the controller's note, with no reads between."""
    threads, answers = waiting_hosts("bcd")
    until_read(record_reads, 3)
    time.sleep(0.3)  # the hosts wait: a gate polling every 10 ms would read 90 times more
    before = len(record_reads)
    records.set_verdict(run, 0, {"go": True, "failures": 0, "allowed": 0})
    told = time.monotonic()
    os.write(verdict_fd, ev.verdict_line(0))
    for thread in threads:
        thread.join(timeout=10)
    assert {name: answer for name, (answer, _) in answers.items()} == dict.fromkeys("bcd", True)
    assert max(when for _, when in answers.values()) - told < 1.0  # woken by the note
    assert before == 3  # one read each before waiting: no 10 ms loop while waiting
    assert len(record_reads) == 6
    assert "b" not in records.load_record(run).get("hosts", {})


def test_a_verdict_written_before_the_stage_started_is_read_from_the_record(
        run: str, verdict_fd: int, record_reads: list[float]) -> None:
    records.set_verdict(run, 0, {"go": False, "failures": 1, "allowed": 0})
    target = host("b")
    assert wait_for_verdict(None, target, 1, os.getppid()) is False  # type: ignore[arg-type]
    assert len(record_reads) == 1
    assert target.logged == ["not deployed: 1 host(s) of earlier rollout stages failed "
                             "(allowed: 0)"]


def test_end_of_the_verdict_pipe_skips_the_host_as_the_controller_is_gone(
        run: str, verdict_fd: int) -> None:
    """The controller's end of the pipe closes (it died): every waiting host is skipped, while
    its parent (this test's) still runs."""
    threads, answers = waiting_hosts("bc")
    os.close(verdict_fd)
    for thread in threads:
        thread.join(timeout=10)
    assert {name: answer for name, (answer, _) in answers.items()} == dict.fromkeys("bc", False)
    for name in "bc":
        assert records.load_record(run)["hosts"][name] == {
            "status": "skipped",
            "reason": "not deployed: the fleet deploy that started this stage is gone"}


def test_the_gate_ignores_garbage_on_the_verdict_pipe(
        run: str, verdict_fd: int, record_reads: list[float]) -> None:
    """Lines that are not a stage number wake no host to read the record; a note after them
    still does."""
    threads, answers = waiting_hosts("b")
    until_read(record_reads, 1)
    os.write(verdict_fd, b"x\n-1\n 0\n1234567\n\xff\n" + b"9" * 600 + b"\n")
    os.write(verdict_fd, b"0" * 700)  # a line too long, cut across reads
    records.set_verdict(run, 0, {"go": True, "failures": 0, "allowed": 0})
    os.write(verdict_fd, b"\n0\n")
    threads[0].join(timeout=10)
    assert answers["b"][0] is True
    assert len(record_reads) == 2
    pipe = ev.verdict_pipe()
    assert pipe is not None and pipe.notes == 1


REGION_FLEET = """\
fleet:
  regions: {eu: {batch: 1}, us: null, ap: {max_failures: 1}}
wizards:
  o: {host: 192.0.2.1, role: orchestrator, model: m, region: us}
  a1: {host: 192.0.2.2, role: worker, model: m, region: ap}
  e1: {host: 192.0.2.3, role: worker, model: m, region: eu}
  u1: {host: 192.0.2.4, role: worker, model: m, region: us}
  e2: {host: 192.0.2.5, role: worker, model: m, region: eu}
  a2: {host: 192.0.2.6, role: worker, model: m, region: ap}
"""


@pytest.fixture
def region_fleet(tmp_path: Path):
    path = tmp_path / "registry.yaml"
    path.write_text(REGION_FLEET)
    return load_registry(path)


def test_region_waves_canary_then_each_region_in_order(region_fleet) -> None:
    names = select(region_fleet, ())
    assert plan_waves(region_fleet, names, None) == [
        ("us", ["o"]), ("eu", ["e1"]), ("eu", ["e2"]), ("us", ["u1"]), ("ap", ["a1", "a2"])]
    assert plan_waves(region_fleet, names, 1)[-2:] == [("ap", ["a1"]), ("ap", ["a2"])]


def test_region_option_selects_one_region(region_fleet) -> None:
    assert select(region_fleet, (), ("ap",)) == ["a1", "a2"]
    assert plan_waves(region_fleet, select(region_fleet, (), ("us",)), None) == [
        ("us", ["o"]), ("us", ["u1"])]
    with pytest.raises(DeployError, match=r"--region 'mars' is not a region of the fleet "
                                          r"\(regions: eu, us, ap\)"):
        select(region_fleet, (), ("mars",))


def test_free_text_regions_do_not_split_the_workers(registry) -> None:
    """Without ``fleet.regions`` an agent's region is a label: one workers wave as before."""
    assert plan_waves(registry, select(registry, ()), None) == [
        (None, ["ezra-primary"]), (None, ["bezalel", "allegro"])]
