"""The run record is the audit trail: on a lab of 5 nodes, each host's record lists exactly its
own changed operations (the cold deploy's list, in order) after a cold deploy, none after a
no-change deploy, and a converged fleet's dry run plans none (``fleet deploy --dry`` and plain
pyinfra agree). Then, on the same nodes: ``--max-failures`` decides whether the workers after a
failed one deploy; on a terminal, a deploy of a canary and two batches with a broken worker is
drawn live (issue 26); and plain ``pyinfra -y inventory.py deploy.py`` deploys for real, with
verify and rollback per host."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from fleet import lab
from fleet.control.records import new_run_id
from tests.deploy.conftest import COLD_CHANGES, Fleet, make_fleet
from tests.lab_fixtures import claim_test_lab, fresh_lab
from tests.terminal import final_screen, run_on_terminal

pytestmark = [pytest.mark.lab, pytest.mark.slow]
NODES = 5
LOCK = "/run/fleet-deploy.lock"


@pytest.fixture(scope="module")
def fleet5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A clean clone wired to a lab of 5 fresh nodes of its own."""
    claimed = claim_test_lab("records")
    try:
        registry = fresh_lab(claimed.lab, nodes=NODES)
        yield make_fleet(registry, tmp_path_factory.mktemp("records"))
    finally:
        lab.down(claimed.lab)
        claimed.release()


def test_cold_deploy_records_each_hosts_own_changes(fleet5: Fleet) -> None:
    done = fleet5.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = fleet5.record(done.stdout)["hosts"]
    assert len(hosts) == NODES
    for name, entry in hosts.items():
        assert entry["status"] == "ok"
        # its own operations, each once, in order: no other host's, none left out
        assert entry["changed"] == COLD_CHANGES, f"{name}: {entry['changed']}"


def test_no_change_deploy_records_no_change(fleet5: Fleet) -> None:
    done = fleet5.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = fleet5.record(done.stdout)["hosts"]
    assert {name: (entry["changed"], entry["restarted"]) for name, entry in hosts.items()} == \
        {name: ([], False) for name in hosts}


def test_converged_dry_run_plans_no_change(fleet5: Fleet) -> None:
    done = fleet5.run("deploy", "--dry")
    assert done.returncode == 0, done.stdout + done.stderr
    record = fleet5.record(done.stdout)
    assert {name: (entry["status"], entry["planned"]) for name, entry in
            record["hosts"].items()} == {name: ("planned", []) for name in record["hosts"]}
    assert "0 change(s)" in done.stdout
    plain = fleet5.pyinfra("--json", "inventory.py", "deploy.py")  # no -y: a dry run
    assert plain.returncode == 0, plain.stdout + plain.stderr
    plan = json.loads(plain.stdout)["plan"]
    assert plan and not [(op["name"], op["hosts_with_change"], op["hosts_with_conditional_change"])
                         for op in plan
                         if op["hosts_with_change"] or op["hosts_with_conditional_change"]]



def with_config(fleet: Fleet, folder: Path, config: dict[str, Any]) -> Path:
    """A copy of the lab registry (souls beside it) giving every agent ``config``."""
    data = yaml.safe_load(fleet.registry.read_text())
    for entry in data["wizards"].values():
        entry["config"] = config
    folder.mkdir()
    shutil.copytree(fleet.registry.parent / "souls", folder / "souls")
    edited = folder / "registry.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    return edited


def hold_lock(fleet: Fleet, agent: str) -> None:
    """Another deploy holds ``agent``'s node: its preflight fails."""
    fleet.ssh(agent, f"mkdir {LOCK} && echo 'elsewhere:1:run-x 9999999999' > {LOCK}/owner")


def node_config(fleet: Fleet, agent: str) -> Any:
    return json.loads(fleet.ssh(agent, f"cat /etc/fleet/{agent}/config.json"))["config"]


def test_max_failures_decides_whether_the_workers_after_a_failed_one_deploy(
        fleet5: Fleet, tmp_path: Path) -> None:
    names = list(yaml.safe_load(fleet5.registry.read_text())["wizards"])
    first, second, *rest = names[1:]  # the workers, one stage each under --batch 1
    hold_lock(fleet5, first)
    try:
        # one failed worker, one allowed: every other worker deploys; the run is degraded
        edited = with_config(fleet5, tmp_path / "one", {"round": 1})
        done = fleet5.run("deploy", "--batch", "1", "--max-failures", "1", registry=edited)
        assert done.returncode == 1, done.stdout + done.stderr
        record = fleet5.record(done.stdout)
        hosts = record["hosts"]
        assert (record["status"], record["skipped"]) == ("degraded", [])
        assert (hosts[first]["status"], hosts[first]["phase"]) == ("failed", "preflight")
        assert {name: hosts[name]["status"] for name in [names[0], second, *rest]} == \
            dict.fromkeys([names[0], second, *rest], "ok")
        assert {name: node_config(fleet5, name) for name in [names[0], second, *rest]} == \
            {name: {"round": 1} for name in [names[0], second, *rest]}
        assert node_config(fleet5, first) == {}
        # two failed workers, one allowed: the rollout stops after the second
        hold_lock(fleet5, second)
        edited = with_config(fleet5, tmp_path / "two", {"round": 2})
        done = fleet5.run("deploy", "--batch", "1", "--max-failures", "1", registry=edited)
        assert done.returncode == 1, done.stdout + done.stderr
        record = fleet5.record(done.stdout)
        assert (record["status"], record["skipped"]) == ("failed", rest)
        assert "2 host(s) failed (allowed: 1)" in done.stdout
        assert {name: node_config(fleet5, name) for name in rest} == \
            {name: {"round": 1} for name in rest}
        assert node_config(fleet5, names[0]) == {"round": 2}
    finally:
        for name in (first, second):
            fleet5.ssh(name, f"rm -rf {LOCK}")


def test_a_rollout_is_drawn_live_on_a_terminal(fleet5: Fleet, tmp_path: Path) -> None:
    """``fleet deploy --batch 2`` under a pseudo-terminal, the first worker locked by another
    deploy (it fails preflight): the final screen shows the canary and both batches, the
    broken host with its reason, the others ok; the phases were shown as they came."""
    names = list(yaml.safe_load(fleet5.registry.read_text())["wizards"])
    broken = names[1]  # as the last test left it: {} on it, so the next test's plan holds
    edited = with_config(fleet5, tmp_path / "live", {"round": "live"})  # every host changes
    typescript = tmp_path / "typescript"
    hold_lock(fleet5, broken)
    try:
        code = run_on_terminal([sys.executable, "-c", "from fleet.cli import main; main()",
                                "--registry", str(edited), "deploy", "--batch", "2",
                                "--max-failures", "1"], fleet5.env, fleet5.clone, typescript)
    finally:
        fleet5.ssh(broken, f"rm -rf {LOCK}")
    raw = typescript.read_bytes()
    screen = final_screen(typescript)
    text = "\n".join(screen)
    assert code == 1, text  # degraded
    assert b"--> Starting operation" not in raw, text  # pyinfra's own lines only with -v
    for phase in (b"preflight", b"waiting", b"release", b"verify"):  # drawn as they came
        assert phase in raw, (phase, text)
    assert re.search(r"^canary +ok$", text, re.MULTILINE), text
    assert re.search(r"^workers batch 1 of 2 +not ok +1 ok, 1 failed$", text, re.MULTILINE), text
    assert re.search(r"^workers batch 2 of 2 +ok$", text, re.MULTILINE), text
    assert re.search(rf"^  {broken} +failed +deploy lock {LOCK} is held by elsewhere:1:run-x",
                     text, re.MULTILINE), text
    for name in names:
        if name != broken:
            assert re.search(rf"^  {name} +ok$", text, re.MULTILINE), (name, text)
    assert re.search(r"^run \S+: degraded$", text, re.MULTILINE), text
    record = fleet5.record(text)
    assert {name: entry["status"] for name, entry in record["hosts"].items()} == \
        {name: "failed" if name == broken else "ok" for name in names}


def test_plain_pyinfra_deploys_every_host_with_verify_and_rollback_per_host(
        fleet5: Fleet) -> None:
    names = list(yaml.safe_load(fleet5.registry.read_text())["wizards"])
    hosts = {name: entry["host"] for name, entry in
             yaml.safe_load(fleet5.registry.read_text())["wizards"].items()}

    def release_of(name: str) -> str:
        body = requests.get(f"http://{hosts[name]}:8646/health", timeout=5).json()
        assert body["status"] == "ok", (name, body)
        return str(body["release"])

    before = {name: release_of(name) for name in names}
    first = names[1]  # the last test left {} on it (locked), and round 1 or 2 on the others
    run_id = new_run_id()
    plain = fleet5.pyinfra("-y", "inventory.py", "deploy.py",
                           extra_env={"FLEET_RUN_ID": run_id})
    assert plain.returncode == 0, plain.stdout + plain.stderr
    record = json.loads((fleet5.records / f"{run_id}.json").read_text())
    assert {name: entry["status"] for name, entry in record["hosts"].items()} == \
        dict.fromkeys(names, "ok")
    assert {name: node_config(fleet5, name) for name in names} == {name: {} for name in names}
    assert {name: "Release | Agent config.json" in entry["changed"]
            for name, entry in record["hosts"].items()} == {name: name != first for name in names}
    # a broken release: every host fails verify and is rolled back on its own, at once
    run_id = new_run_id()
    broken = fleet5.pyinfra("-y", "inventory.py", "deploy.py",
                            extra_env={"FLEET_RUN_ID": run_id, "FLEET_BROKEN_RELEASE": "1"})
    assert broken.returncode != 0, broken.stdout + broken.stderr
    record = json.loads((fleet5.records / f"{run_id}.json").read_text())
    assert {name: entry["status"] for name, entry in record["hosts"].items()} == \
        dict.fromkeys(names, "rolled_back")
    assert {name: release_of(name) for name in names} == before
