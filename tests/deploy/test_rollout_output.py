"""The streamed output of ``fleet deploy`` when stdout is not a terminal (and with
``--plain``), pinned byte for byte as it was before the live view: a scripted rollout
(``tests/deploy/fake_stage.py`` stands in for each stage's pyinfra process) of a canary and two
batches, the first batch's host failing, so the rollout stops and the last batch is skipped.
The same rollout's typed events: phases from the stages' processes, outcomes from the record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control import rollout
from fleet.control import rollout_events as ev
from fleet.control.records import RECORDS_ENV, RUN_ID_ENV, RecordWatch, RunRecord, Verdict
from fleet.core.registry import load_registry
from tests.deploy.fake_stage import FOREIGN_ENV, LINGER_ENV, script_rollout
from tests.terminal import final_screen, run_on_terminal

REPO = Path(__file__).resolve().parents[2]

TODAY = """\
==> canary: ezra-primary; then workers: bezalel; then workers: allegro (release rel-1, run run-1)
--> Loading config...
--> Connecting to hosts...
    [ezra-primary] Connected
--> Starting operation: Baseline | Agent user and group
    [ezra-primary] Success
==> stopped: 1 host(s) failed (allowed: 0); the later stages change nothing
--> Loading config...
--> Connecting to hosts...
    [bezalel] Connected
--> Starting operation: Baseline | Agent user and group
    [bezalel] Error
--> Loading config...
--> Connecting to hosts...
    [allegro] Connected
    not deployed: 1 host(s) of earlier rollout stages failed (allowed: 0)
--> Starting operation: Baseline | Agent user and group
==> run run-1: failed (record: RECORDS/run-1.json)
    allegro          skipped      None 0 changed, not restarted; not deployed: 1 host(s) of \
earlier rollout stages failed (allowed: 0)
    bezalel          failed       rel-1 0 changed, not restarted; preflight: another deploy \
holds the lock
    ezra-primary     ok           rel-1 0 changed, not restarted
"""


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fleet repository whose stages run ``fake_stage`` (bezalel fails preflight); the
    records dir, returned, is under ``tmp_path``."""
    (tmp_path / "inventory.py").write_text("")
    (tmp_path / "deploy.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "records"))
    monkeypatch.setenv(RUN_ID_ENV, "run-1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    monkeypatch.setenv("FAKE_STAGE_OUTCOMES", json.dumps({"bezalel": {
        "status": "failed", "phase": "preflight",
        "problems": ["preflight: another deploy holds the lock"]}}))
    script_rollout(monkeypatch.setattr)
    return tmp_path / "records"


@pytest.mark.parametrize("plain", [[], ["--plain"]], ids=["not-a-terminal", "plain"])
def test_streamed_output_is_todays_byte_for_byte(scripted: Path, plain: list[str]) -> None:
    done = CliRunner().invoke(main, ["--registry", str(REPO / "registry.yaml"), "deploy",
                                     "--batch", "1", *plain])
    assert done.exit_code == 1, done.output
    assert done.output.replace(str(scripted), "RECORDS") == TODAY


def test_the_rollout_tells_phases_from_its_stages_and_outcomes_from_the_record(
        scripted: Path) -> None:
    events: list[ev.RolloutEvent] = []
    lines: list[str] = []
    result = rollout.deploy_fleet(load_registry(REPO / "registry.yaml"),
                                  rollout.RolloutOptions(batch=1), lines.append, events.append)
    assert result.status == "failed"
    assert events[0] == ev.RolloutPlanned(run_id="run-1", kind="deploy", release="rel-1", dry=False,
                                       stages=(ev.StagePlan("canary", None, ("ezra-primary",)),
                                               ev.StagePlan("workers", None, ("bezalel",)),
                                               ev.StagePlan("workers", None, ("allegro",))))
    assert events[-1] == ev.RolloutFinished("failed")
    phases = [(event.host, event.phase) for event in events if isinstance(event, ev.HostPhase)]
    assert [phase for host, phase in phases if host == "ezra-primary"] == \
        ["preflight", "baseline"]
    assert [phase for host, phase in phases if host == "bezalel"] == \
        ["preflight", "waiting", "baseline"]
    assert ("allegro", "waiting") in phases and ("allegro", "baseline") not in phases
    done = [event for event in events if isinstance(event, ev.HostDone)]
    assert done == [ev.HostDone("ezra-primary", "ok"),
                    ev.HostDone("bezalel", "failed", "preflight: another deploy holds the lock"),
                    ev.HostDone("allegro", "skipped", "not deployed: 1 host(s) of earlier rollout "
                                                   "stages failed (allowed: 0)")]
    stopped = events.index(ev.RolloutStopped("1 host(s) failed (allowed: 0)"))
    assert events.index(done[1]) < stopped < events.index(done[2])
    assert [event.index for event in events if isinstance(event, ev.StageStarted)] == [0, 1, 2]
    assert lines[0].startswith("==> canary: ezra-primary; then workers: bezalel")
    assert not any(isinstance(event, ev.HostRecorded) for event in events)  # notes, not events


def test_the_controller_judges_a_stage_on_its_recorded_note_without_a_timer(
        scripted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stage process (``fake_stage``) waits for the verdict on its own stage before it
    prints and ends, then runs on for a second: the verdict comes right after the stage's
    "recorded" note, before its end, and the controller reads the record on notes only (when it
    starts following a stage, on a "recorded" note of it, at its end), not while it waits."""
    monkeypatch.setenv(LINGER_ENV, "1")
    log: list[tuple[object, ...]] = []
    reads: list[float] = []

    class CountedWatch(RecordWatch):
        def read(self, max_age: float = 0.0) -> RunRecord:
            reads.append(time.monotonic())
            return super().read(max_age)

    real_take, real_verdict = rollout.Rollout._take, rollout.set_verdict

    def take(self: rollout.Rollout, index: int, which: int, note: object) -> bool:
        log.append(("note", which, note, time.monotonic()))
        return real_take(self, index, which, note)  # type: ignore[arg-type]

    def set_verdict(run_id: str, stage: int, verdict: Verdict) -> None:
        log.append(("verdict", stage, None, time.monotonic()))
        real_verdict(run_id, stage, verdict)

    monkeypatch.setattr(rollout, "RecordWatch", CountedWatch)
    monkeypatch.setattr(rollout.Rollout, "_take", take)
    monkeypatch.setattr(rollout, "set_verdict", set_verdict)
    result = rollout.deploy_fleet(load_registry(REPO / "registry.yaml"),
                                  rollout.RolloutOptions(batch=1), lambda line: None)
    assert result.status == "failed"
    for stage, name in ((0, "ezra-primary"), (1, "bezalel")):
        recorded = next(i for i, entry in enumerate(log)
                        if entry[:3] == ("note", stage, ev.HostRecorded(name)))
        verdict = next(i for i, entry in enumerate(log) if entry[:2] == ("verdict", stage))
        end = log.index(next(entry for entry in log if entry[:3] == ("note", stage, None)))
        assert recorded < verdict < end
    # stage 0 is followed when its note comes (stage 1's comes while stage 0 runs on: it is
    # judged when followed, as soon as stage 0 ended)
    recorded = next(e for e in log if e[:3] == ("note", 0, ev.HostRecorded("ezra-primary")))
    verdict = next(entry for entry in log if entry[:2] == ("verdict", 0))
    assert verdict[3] - recorded[3] < 0.5
    # 3 stages, each looked at (2 reads) when followed and on its one recorded note
    assert len(reads) <= 12, len(reads)


@pytest.mark.parametrize("verbose", [False, True], ids=["view", "view-and-pyinfra-lines"])
def test_on_a_terminal_the_rollout_is_drawn_live(scripted: Path, tmp_path: Path,
                                                 verbose: bool) -> None:
    typescript = tmp_path / "typescript"
    code = run_on_terminal([sys.executable, "-m", "tests.deploy.fake_stage", "--cli",
                            "--registry", str(REPO / "registry.yaml"), "deploy", "--batch", "1",
                            *(["-v"] if verbose else [])],
                           os.environ, tmp_path, typescript, timeout=120)
    assert code == 1
    raw = typescript.read_bytes()
    assert b"\x1b[" in raw  # drawn
    assert (raw.count(b"--> Loading config...\r\n") == 3) is verbose  # one per stage with -v
    streamed = ("-->", "    [", "    not deployed", "==> canary", "==> stopped")  # with -v
    screen = [line for line in final_screen(typescript) if not line.startswith(streamed)]
    assert screen[:10] == [
        "deploy release rel-1, run run-1",
        "canary                ok",
        "  ezra-primary        ok",
        "workers batch 1 of 2  failed",
        "  bezalel             failed       preflight: another deploy holds the lock",
        "workers batch 2 of 2  skipped",
        "  allegro             skipped      not deployed: 1 host(s) of earlier rollout stages "
        "failed (allowed: 0)",
        "stopped: 1 host(s) failed (allowed: 0); the later stages change nothing",
        "run run-1: failed",
        f"==> run run-1: failed (record: {scripted}/run-1.json)"], "\n".join(screen)


def test_a_rollout_without_a_terminal_needs_no_rich() -> None:
    """The webhook receiver runs ``fleet deploy`` on its node, whose release carries no
    ``rich``: off a terminal the CLI streams text without importing it."""
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "from fleet.cli import deploy\n"
        "seen = []\n"
        "deploy.deploy_fleet = lambda registry, options, echo, *rest: seen.append(rest)\n"
        "deploy.run(None, None, plain=False, verbose=False)\n"
        "assert seen == [()], seen\n"
        "assert not any(name.startswith('fleet.cli.progress') for name in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_a_region_unreachable_for_three_batches_does_not_hold_up_the_next_region(
        scripted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Region eu's first batch fails preflight: its second batch (started meanwhile) is skipped
    and its third never starts; region us's stage still gets a verdict to go on (it waited
    for one on the unstarted batch before)."""
    registry = tmp_path / "regions.yaml"
    registry.write_text(
        "fleet:\n  regions: {eu: {batch: 1}, us: null}\nwizards:\n"
        "  o: {host: 192.0.2.1, role: orchestrator, model: m, region: us}\n"
        + "".join(f"  e{i}: {{host: 192.0.2.{i + 1}, role: worker, model: m, region: eu}}\n"
                  for i in (1, 2, 3))
        + "  u1: {host: 192.0.2.9, role: worker, model: m, region: us}\n")
    failed = {"status": "failed", "phase": "preflight", "problems": ["no route"]}
    monkeypatch.setenv("FAKE_STAGE_OUTCOMES", json.dumps(dict.fromkeys(["e1", "e2", "e3"],
                                                                        failed)))
    started = time.monotonic()
    result = rollout.deploy_fleet(load_registry(registry), rollout.RolloutOptions(),
                                  lambda line: None)
    assert time.monotonic() - started < 60
    assert result.status == "partial"
    assert {name: entry["status"] for name, entry in result.hosts.items()} == {
        "o": "ok", "e1": "skipped", "e2": "skipped", "e3": "skipped", "u1": "ok"}


def test_a_stage_speaks_for_its_own_hosts_only(scripted: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage's process also reports ``allegro`` (the last batch's host) as verified:
    only allegro's own stage may tell its phases, so the view never shows it verifying while
    its stage waits or was skipped."""
    monkeypatch.setenv(FOREIGN_ENV, "allegro")
    events: list[ev.RolloutEvent] = []
    result = rollout.deploy_fleet(load_registry(REPO / "registry.yaml"),
                                  rollout.RolloutOptions(batch=1), lambda line: None,
                                  events.append)
    assert result.status == "failed"
    phases = [(event.host, event.phase) for event in events if isinstance(event, ev.HostPhase)]
    assert ("allegro", "waiting") in phases
    assert ("allegro", "verify") in phases  # its own stage said so (the scripted stage does)
    first_of_its_stage = next(i for i, event in enumerate(events)
                              if event == ev.StageStarted(2))
    assert ("allegro", "verify") not in [
        (event.host, event.phase) for event in events[:first_of_its_stage]
        if isinstance(event, ev.HostPhase)]
