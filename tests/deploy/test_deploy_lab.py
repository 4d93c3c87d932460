"""Acceptance of the 8-phase deploy on the nspawn lab, from a clean clone.

The scenario: cold deploy, no-change redeploy, one agent's config change, a broken release
rolled back by verify, ``fleet rollback``, a release whose gateway exits at once rolled back on
the canary only, then checks over everything that happened (state dir untouched, secrets never
printed). Every test also runs alone: the module's ``cold`` fixture re-creates the nodes and
deploys to them once, and a test that needs an earlier step gets it from a fixture
(``broken_deploy``) or brings the fleet to the state it starts from itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml

from bus.keys import PRIVATE_KEY_ENV
from tests.deploy.conftest import COLD_CHANGES, SECRETS, Fleet, secret_values
from tests.lab_fixtures import fresh_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENTS = list(SECRETS["agents"])
STATE_FILE = "/var/lib/fleet/bezalel/memory.txt"
STATE_PROBE = f"stat -c '%i %Y %s' {STATE_FILE} && sha256sum {STATE_FILE}"
ROTATED_KEY = "sk-or-test-SECRET-rotated-5e6f"
FULL_TRANSCRIPT = 8
"""At least this many commands run when the whole scenario ran."""


@dataclass(frozen=True)
class ColdDeploy:
    """The module's first deploy, to freshly booted nodes, and what later tests compare with."""

    done: subprocess.CompletedProcess[str]
    record: dict[str, Any]
    release: str
    state: str
    """``STATE_PROBE`` of bezalel's state file, written just after the deploy."""


@pytest.fixture(scope="module", autouse=True)
def cold(fleet: Fleet, session_lab_name: str) -> ColdDeploy:
    """Re-create the session lab's nodes and deploy to them once per module; then leave a file
    in bezalel's state dir. Every test starts from this converged fleet (or from what earlier
    tests left, which they converge back to)."""
    assert fresh_lab(session_lab_name) == fleet.registry  # cold: every operation changes
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    record = fleet.record(done.stdout)
    fleet.ssh("bezalel", f"echo remembered > {STATE_FILE} && chown bezalel: {STATE_FILE}")
    return ColdDeploy(done=done, record=record, release=record["release"],
                      state=fleet.ssh("bezalel", STATE_PROBE))


@pytest.fixture(scope="module")
def broken_deploy(fleet: Fleet, cold: ColdDeploy) -> subprocess.CompletedProcess[str]:
    """A deploy of a release that fails verify on the canary (rolled back there), once per
    module: afterwards ezra-primary's previous release is the broken one."""
    return fleet.run("deploy", extra_env={"FLEET_BROKEN_RELEASE": "1"})


def lab_hosts(fleet: Fleet) -> dict[str, str]:
    """Each agent's node address, from the lab registry."""
    data = yaml.safe_load(fleet.registry.read_text())
    return {name: entry["host"] for name, entry in data["wizards"].items()}


def edited_registry(fleet: Fleet, folder: Path, changes: dict[str, dict[str, Any]]) -> Path:
    """A copy of the lab registry in ``folder`` (souls beside it, as they must be) with each
    agent's entries in ``changes`` set."""
    data = yaml.safe_load(fleet.registry.read_text())
    for agent, entries in changes.items():
        data["wizards"][agent].update(entries)
    shutil.copytree(fleet.registry.parent / "souls", folder / "souls")
    edited = folder / "registry.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    return edited


def rotated_secrets(folder: Path) -> Path:
    """A 0600 secrets file like the fleet's, with OPENROUTER_API_KEY rotated."""
    changed = json.loads(json.dumps(SECRETS))
    changed["fleet"]["OPENROUTER_API_KEY"] = ROTATED_KEY
    secrets = folder / "secrets.yaml"
    secrets.write_text(json.dumps(changed))
    secrets.chmod(0o600)
    return secrets


def whole_scenario(request: pytest.FixtureRequest) -> bool:
    """Whether this session runs every test of this file (not one or a few of them)."""
    selected = {item.name for item in request.session.items if item.path == request.path}
    return selected >= {name for name in globals() if name.startswith("test_")}


def test_cold_deploy_brings_every_agent_to_healthy(fleet: Fleet, cold: ColdDeploy) -> None:
    record = cold.record
    assert record["status"] == "ok"
    assert [stage["hosts"] for stage in record["stages"]] == [["ezra-primary"],
                                                            ["bezalel", "allegro"]]
    for agent, host in lab_hosts(fleet).items():
        assert record["hosts"][agent]["status"] == "ok"
        assert record["hosts"][agent]["drift"] == []
        assert record["hosts"][agent]["changed"] == COLD_CHANGES  # its own, each once
        health = requests.get(f"http://{host}:8646/health", timeout=5)
        assert health.status_code == 200
        body = health.json()
        assert (body["agent"], body["release"], body["status"]) == (agent, cold.release, "ok")
        soul = (fleet.clone / "souls" / f"{agent}.md").read_bytes()
        assert body["soul_sha256"] == hashlib.sha256(soul).hexdigest()
        card = requests.get(f"http://{host}:8646/.well-known/agent-card.json", timeout=5).json()
        assert card["name"] == agent and card["version"] == cold.release


def test_status_shows_release_soul_hash_and_health(fleet: Fleet, cold: ColdDeploy) -> None:
    done = fleet.run("status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    agents = {entry["agent"]: entry for entry in json.loads(done.stdout)["agents"]}
    assert list(agents) == AGENTS
    for agent, entry in agents.items():
        soul = (fleet.clone / "souls" / f"{agent}.md").read_bytes()
        assert (entry["ssh"], entry["health"], entry["release"]) == ("ok", "ok", cold.release)
        assert entry["soul_sha256"] == hashlib.sha256(soul).hexdigest()
    table = fleet.run("status").stdout.splitlines()
    assert table[0].split() == ["AGENT", "ROLE", "HOST", "SSH", "HEALTH", "RELEASE", "SOUL",
                                "STATE"]
    assert all(row.split()[3:6] == ["ok", "ok", cold.release] and row.split()[7] == "ok"
               for row in table[1:4])


def test_second_deploy_changes_and_restarts_nothing(
        fleet: Fleet, unit_state: Callable[[], dict[str, str]]) -> None:
    before = unit_state()
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    record = fleet.record(done.stdout)
    for agent in AGENTS:
        entry = record["hosts"][agent]
        assert (entry["status"], entry["changed"], entry["restarted"]) == ("ok", [], False)
    assert unit_state() == before


def test_converged_fleet_dry_run_shows_no_change(fleet: Fleet) -> None:
    plan = fleet.pyinfra("--json", "inventory.py", "deploy.py")  # no -y: a dry run
    assert plan.returncode == 0, plan.stdout + plan.stderr
    operations = json.loads(plan.stdout)["plan"]
    assert operations and json.loads(plan.stdout)["results"] is None
    assert [op["name"] for op in operations
            if op["hosts_with_change"] or op["hosts_with_conditional_change"]] == []
    assert not [op["name"] for op in operations if any(agent in op["name"] for agent in AGENTS)]
    table = fleet.pyinfra("inventory.py", "deploy.py", "--dry")
    output = table.stdout + table.stderr
    assert table.returncode == 0, output
    rows = output.split("Conditional Change", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert len(rows) == len(operations)
    assert {tuple(re.split(r"\s{2,}", row.strip())[1:]) for row in rows} == {("-", "-")}
    done = fleet.run("deploy", "--dry")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = fleet.record(done.stdout)["hosts"]
    assert {agent: (hosts[agent]["status"], hosts[agent]["planned"]) for agent in AGENTS} == {
        agent: ("planned", []) for agent in AGENTS}


def test_config_change_touches_only_that_agent(
        fleet: Fleet, unit_state: Callable[[], dict[str, str]], tmp_path: Path) -> None:
    edited = edited_registry(fleet, tmp_path, {"bezalel": {"config": {"temperature": 0.2}}})
    before = unit_state()
    done = fleet.run("deploy", registry=edited)
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = fleet.record(done.stdout)["hosts"]
    assert hosts["bezalel"]["restarted"] is True
    assert any("config.json" in name for name in hosts["bezalel"]["changed"])
    for agent in ("ezra-primary", "allegro"):
        assert (hosts[agent]["changed"], hosts[agent]["restarted"]) == ([], False)
    after = unit_state()
    assert after["bezalel"] != before["bezalel"]
    assert {a: after[a] for a in ("ezra-primary", "allegro")} == {
        a: before[a] for a in ("ezra-primary", "allegro")}
    config = json.loads(fleet.ssh("bezalel", "cat /etc/fleet/bezalel/config.json"))
    assert config["config"] == {"temperature": 0.2}


def restarted_at(fleet: Fleet, agent: str) -> datetime:
    """When the agent's unit last became active (microseconds, UTC)."""
    line = fleet.ssh(agent, f"systemctl show fleet-agent-{agent}.service "
                     "-p ActiveEnterTimestamp --timestamp=us+utc").strip()
    return datetime.strptime(line.split("=", 1)[1], "%a %Y-%m-%d %H:%M:%S.%f %Z")


def test_batch_one_deploys_the_workers_one_after_the_other(
        fleet: Fleet, tmp_path: Path) -> None:
    start = edited_registry(fleet, tmp_path / "start",  # as the config-change test leaves it
                            {"bezalel": {"config": {"temperature": 0.2}}})
    started = fleet.run("deploy", registry=start)
    assert started.returncode == 0, started.stdout + started.stderr
    edited = edited_registry(fleet, tmp_path / "edited",  # bezalel: back to no config
                             {"allegro": {"config": {"temperature": 0.3}}})
    for registry, restarted in ((edited, {"bezalel", "allegro"}), (fleet.registry, {"allegro"})):
        done = fleet.run("deploy", "--batch", "1", registry=registry)
        assert done.returncode == 0, done.stdout + done.stderr
        record = fleet.record(done.stdout)
        assert [stage["hosts"] for stage in record["stages"]] == [
            ["ezra-primary"], ["bezalel"], ["allegro"]]
        assert record["verdicts"] == {str(index): {"go": True, "failures": 0, "allowed": 0}
                                      for index in range(3)}
        assert {name for name, entry in record["hosts"].items() if entry["restarted"]} == \
            restarted
        assert all(entry["status"] == "ok" for entry in record["hosts"].values())
        assert "==> canary: ezra-primary; then workers: bezalel; then workers: allegro " in \
            done.stdout
        finished = [stage["finished"] for stage in record["stages"]]
        assert finished == sorted(finished)
        if restarted == {"bezalel", "allegro"}:  # allegro's batch restarts after bezalel's passed
            assert restarted_at(fleet, "allegro") > restarted_at(fleet, "bezalel")
    config = json.loads(fleet.ssh("allegro", "cat /etc/fleet/allegro/config.json"))
    assert config["config"] == {}


def test_broken_release_is_rolled_back_by_verify(
        fleet: Fleet, cold: ColdDeploy, broken_deploy: subprocess.CompletedProcess[str]) -> None:
    done = broken_deploy
    assert done.returncode == 1, done.stdout + done.stderr
    good = cold.release
    assert f"rolled back to release {good}, which is healthy" in done.stdout
    record = fleet.record(done.stdout)
    canary = record["hosts"]["ezra-primary"]
    assert record["status"] == "failed"
    assert record["skipped"] == ["bezalel", "allegro"]
    assert (canary["status"], canary["release"]) == ("rolled_back", good)
    assert canary["expected_release"] == f"{good}-broken"
    assert "built broken on purpose" in " ".join(canary["verify"]["problems"])
    # the record says what the rollback did, not "0 changed, not restarted"
    assert {f"Rollback | current release switched back to {good}",
            "Rollback | agent service restarted"} <= set(canary["changed"]), canary
    host = lab_hosts(fleet)["ezra-primary"]
    body = requests.get(f"http://{host}:8646/health", timeout=5).json()
    assert (body["status"], body["release"]) == ("ok", good)


@pytest.mark.usefixtures("broken_deploy")  # ezra-primary's previous release: the broken one
def test_fleet_rollback_switches_restarts_and_verifies(fleet: Fleet, cold: ColdDeploy) -> None:
    good = cold.release
    to_broken = fleet.run("rollback", "ezra-primary")
    assert to_broken.returncode == 1
    assert fleet.record(to_broken.stdout)["hosts"]["ezra-primary"]["release"] == f"{good}-broken"
    back = fleet.run("rollback", "ezra-primary", "--to", good)
    assert back.returncode == 0, back.stdout + back.stderr
    entry = fleet.record(back.stdout)["hosts"]["ezra-primary"]
    assert (entry["status"], entry["release"]) == ("ok", good)
    assert entry["restarted"] is True and entry["changed"], entry  # switched and restarted
    assert "0 changed, not restarted" not in back.stdout
    history = fleet.ssh("ezra-primary", "cat /opt/fleet/history").split()
    assert history[-4:] == [f"{good}-broken", good, f"{good}-broken", good]


def test_release_whose_gateway_exits_at_once_is_rolled_back_on_the_canary_only(
        fleet: Fleet, cold: ColdDeploy) -> None:
    good = cold.release
    workers_before = {agent: fleet.ssh(agent, "readlink /opt/fleet/current")
                      for agent in ("bezalel", "allegro")}
    done = fleet.run("deploy", extra_env={"FLEET_BROKEN_RELEASE": "exit"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"rolled back to release {good}, which is healthy" in done.stdout
    record = fleet.record(done.stdout)
    canary = record["hosts"]["ezra-primary"]
    assert (record["status"], record["skipped"]) == ("failed", ["bezalel", "allegro"])
    assert (canary["status"], canary["release"], canary["expected_release"]) == (
        "rolled_back", good, f"{good}-broken-exit")
    assert canary["verify"]["problems"], canary
    assert "built broken on purpose" not in " ".join(canary["verify"]["problems"])  # never served
    journal = fleet.ssh("ezra-primary", "journalctl -q -o cat -u fleet-agent-ezra-primary.service")
    assert f"release {good}-broken-exit was built broken on purpose" in journal
    assert {agent: fleet.ssh(agent, "readlink /opt/fleet/current")
            for agent in ("bezalel", "allegro")} == workers_before
    host = lab_hosts(fleet)["ezra-primary"]
    body = requests.get(f"http://{host}:8646/health", timeout=5).json()
    assert (body["status"], body["release"]) == ("ok", good)


def test_state_dir_survives_deploys_and_rollbacks(
        fleet: Fleet, cold: ColdDeploy, tmp_path: Path) -> None:
    edited = edited_registry(fleet, tmp_path, {"bezalel": {"config": {"temperature": 0.4}}})
    for registry in (edited, fleet.registry):  # a config change and back: two restarts
        done = fleet.run("deploy", "--limit", "bezalel", registry=registry)
        assert done.returncode == 0, done.stdout + done.stderr
        assert fleet.record(done.stdout)["hosts"]["bezalel"]["restarted"] is True
        assert fleet.ssh("bezalel", STATE_PROBE) == cold.state  # as the cold fixture left it


def test_operator_keys_are_added_next_to_the_lab_key(fleet: Fleet, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator",
                    "-f", str(tmp_path / "op")], check=True)
    public = (tmp_path / "op.pub").read_text().strip()
    edited = edited_registry(fleet, tmp_path, {"allegro": {"authorized_keys": [public]}})
    before = fleet.ssh("allegro", "cat /root/.ssh/authorized_keys")
    done = fleet.run("deploy", "--limit", "allegro", registry=edited)
    assert done.returncode == 0, done.stdout + done.stderr
    entry = fleet.record(done.stdout)["hosts"]["allegro"]
    assert entry["drift"] == [] and entry["restarted"] is False
    assert fleet.ssh("allegro", "cat /root/.ssh/authorized_keys") == before + public + "\n"
    again = fleet.record(fleet.run("deploy", "--limit", "allegro", registry=edited).stdout)
    assert again["hosts"]["allegro"]["changed"] == []


def test_locked_node_fails_preflight_before_anything_changes(fleet: Fleet) -> None:
    lock = "/run/fleet-deploy.lock"
    fleet.ssh("allegro", f"mkdir {lock} && echo 'elsewhere:1:run-x 9999999999' > {lock}/owner")
    before = fleet.ssh("allegro", "ls -la --time-style=+%s /etc/fleet/allegro /opt/fleet")
    done = fleet.run("deploy", "--limit", "allegro")
    fleet.ssh("allegro", f"rm -rf {lock}")
    assert done.returncode == 1
    assert (f"preflight failed: deploy lock {lock} is held by elsewhere:1:run-x"
            in done.stdout)
    entry = fleet.record(done.stdout)["hosts"]["allegro"]
    assert (entry["status"], entry["phase"]) == ("failed", "preflight")
    assert fleet.ssh("allegro", "ls -la --time-style=+%s /etc/fleet/allegro /opt/fleet") == before


def test_dry_diff_shows_file_diffs_with_secrets_masked(fleet: Fleet, tmp_path: Path) -> None:
    done = fleet.pyinfra("inventory.py", "deploy.py", "--dry", "--diff",
                         extra_env={"FLEET_SECRETS": str(rotated_secrets(tmp_path))})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Will modify /etc/fleet/allegro/env" in output
    assert "OPENROUTER_API_KEY=*** (changed)" in output
    assert "rotated" not in output

    secret = SECRETS["fleet"]["OPENROUTER_API_KEY"]  # a secret sitting in `config:`
    forms = [secret, base64.b64encode(secret.encode()).decode(), quote(secret, safe="")]
    edited = edited_registry(fleet, tmp_path, {
        "allegro": {"config": {f"k{i}": form for i, form in enumerate(forms)}}})
    done = fleet.pyinfra("inventory.py", "deploy.py", "--dry", "--diff", "--limit", "allegro",
                         extra_env={"FLEET_REGISTRY": str(edited)})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Will modify /etc/fleet/allegro/config.json" in output
    assert '"k0": "***"' in output
    assert not [form for form in forms if form in output]


def test_no_secret_in_any_output_or_record(
        fleet: Fleet, cold: ColdDeploy, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if whole_scenario(request):  # every command of the scenario is in the transcript
        assert len(fleet.transcript) >= FULL_TRANSCRIPT
    else:  # alone: besides the cold deploy, the outputs that show secrets when they change
        diff = fleet.pyinfra("inventory.py", "deploy.py", "--dry", "--diff",
                             extra_env={"FLEET_SECRETS": str(rotated_secrets(tmp_path))})
        assert diff.returncode == 0, diff.stdout + diff.stderr
        assert "OPENROUTER_API_KEY=*** (changed)" in diff.stdout + diff.stderr
        status = fleet.run("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
    assert cold.done.stdout + cold.done.stderr in fleet.transcript  # it wrote every secret
    records = [path.read_text() for path in fleet.records.glob("*.json")]
    assert records
    for value in [*secret_values(), ROTATED_KEY]:
        assert not [text for text in fleet.transcript if value in text]
        assert not [text for text in records if value in text]
    for agent in AGENTS:
        env_file = f"/etc/fleet/{agent}/env"
        assert fleet.ssh(agent, f"stat -c '%a %U' {env_file}").split() == ["600", "root"]
        content = fleet.ssh(agent, f"cat {env_file}")
        assert SECRETS["agents"][agent][PRIVATE_KEY_ENV] in content
        others = [env[PRIVATE_KEY_ENV] for name, env in
                  [*SECRETS["agents"].items(), *SECRETS["identities"].items()] if name != agent]
        patterns = " ".join(f"-e {key}" for key in others)  # base64: no shell quoting needed
        found = fleet.ssh(agent, f"grep -rlF {patterns} /etc /opt /var/lib/fleet /root /home "
                                 "2>/dev/null || true")
        assert found.strip() == "", f"{agent}'s node holds another identity's private key"
