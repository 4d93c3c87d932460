"""A green deploy means healthy a while later too: a gateway that crashes a few seconds after
its first good answer (systemd ends it after 2 s here, ``RuntimeMaxSec=``, and restarts it)
fails verify, and the run names the restart; a fleet left alone passes again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import Fleet

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT = "allegro"
UNIT = f"fleet-agent-{AGENT}.service"
DROP_IN = f"/etc/systemd/system/{UNIT}.d/zz-crash.conf"


def test_a_gateway_that_crashes_after_start_fails_verify(fleet: Fleet, tmp_path: Path) -> None:
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    data = yaml.safe_load(fleet.registry.read_text())
    data["wizards"][AGENT]["config"] = {"temperature": 0.7}  # a change that restarts it
    edited = tmp_path / "registry.yaml"
    shutil.copytree(fleet.registry.parent / "souls", tmp_path / "souls")
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet.ssh(AGENT, f"mkdir -p $(dirname {DROP_IN}) && printf "
              f"'[Service]\\nRuntimeMaxSec=2\\n' > {DROP_IN} && systemctl daemon-reload")
    try:
        crashing = fleet.run("deploy", "--limit", AGENT, registry=edited)
    finally:
        fleet.ssh(AGENT, f"rm -f {DROP_IN} && systemctl daemon-reload && "
                  f"systemctl restart {UNIT}")
    assert crashing.returncode == 1, crashing.stdout + crashing.stderr
    entry = fleet.record(crashing.stdout)["hosts"][AGENT]
    assert entry["status"] in ("failed", "rolled_back")
    problems = " ".join(entry["verify"]["problems"])
    assert f"{UNIT} restarted after it first answered /health" in problems or \
        f"{UNIT} is activating" in problems or "fails after start" in problems, problems

    again = fleet.run("deploy", "--limit", AGENT, registry=edited)
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.record(again.stdout)["hosts"][AGENT]["status"] == "ok"
    back = fleet.run("deploy")
    assert back.returncode == 0, back.stdout + back.stderr
