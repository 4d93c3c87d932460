"""The streamed output of ``fleet deploy`` when stdout is not a terminal (and with
``--plain``), pinned byte for byte: a scripted rollout (``tests/deploy/fake_stage.py`` stands
in for each stage's pyinfra process) of a canary and two batches, the first batch's host
failing, so the rollout stops and the last batch is skipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control import rollout
from fleet.control.records import RECORDS_ENV, RUN_ID_ENV

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
    monkeypatch.setattr(rollout, "check_known_hosts", lambda registry, names: None)
    monkeypatch.setattr(rollout, "build_release", lambda root: SimpleNamespace(id="rel-1"))
    monkeypatch.setattr(rollout, "release_env", lambda release: {})
    real = rollout.pyinfra_command
    monkeypatch.setattr(rollout, "pyinfra_command", lambda *args, **kwargs: [
        sys.executable, "-m", "tests.deploy.fake_stage", *real(*args, **kwargs)[3:]])
    return tmp_path / "records"


@pytest.mark.parametrize("plain", [[], ["--plain"]], ids=["not-a-terminal", "plain"])
def test_streamed_output_is_todays_byte_for_byte(scripted: Path, plain: list[str]) -> None:
    done = CliRunner().invoke(main, ["--registry", str(REPO / "registry.yaml"), "deploy",
                                     "--batch", "1", *plain])
    assert done.exit_code == 1, done.output
    assert done.output.replace(str(scripted), "RECORDS") == TODAY
