"""Fast tests of the rollout's pure parts: stages, the pyinfra call, verdicts and the gate,
and the typed run record (where it lives, its mode, run ids)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deploys.gate import wait_for_verdict
from fleet.control import records
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
                           "--limit", "a", "--limit", "b", "--dry", "--diff"]
    command = pyinfra_command(["b"], RolloutOptions(), stage=2)
    assert command[1:] == ["-m", "fleet.control.pyinfra_launcher", "-y", "inventory.py",
                           "deploy.py",
                           "--limit", "b", "--data", "rollout_stage=2",
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


def test_gate_gives_up_when_the_controller_is_gone(run: str) -> None:
    target = host("d")
    assert wait_for_verdict(None, target, 1, 1) is False  # type: ignore[arg-type]
    assert "the fleet deploy that started this stage is gone" in \
        records.load_record(run)["hosts"]["d"]["reason"]


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
