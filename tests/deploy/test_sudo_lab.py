"""A sudo-only fleet: nodes that refuse root logins, reached as ``deploy`` with passwordless
sudo (``fleet lab up --ssh-user deploy`` writes ``become: sudo``). The whole deploy works over
it: a cold deploy, a no-change deploy, ``fleet status``, ``fleet test`` (tests/live through
sudo), and ``fleet rollback`` to the previous release."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import requests
import yaml

from fleet.core.registry import load_registry
from tests.deploy.conftest import Fleet, own_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
NODES = 2  # the canary and one worker
USER = "deploy"
RUN: dict[str, str] = {}


@pytest.fixture(scope="module")
def sudo_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A clean clone wired to a lab of its own whose nodes take only ``deploy`` + sudo."""
    with own_lab("sudo", tmp_path_factory.mktemp("sudo"), nodes=NODES, ssh_user=USER) as fleet:
        yield fleet


def hosts(fleet: Fleet) -> dict[str, str]:
    data = yaml.safe_load(fleet.registry.read_text())
    return {name: entry["host"] for name, entry in data["wizards"].items()}


def login(fleet: Fleet, user: str, host: str, command: str) -> subprocess.CompletedProcess[str]:
    registry = load_registry(fleet.registry)
    return subprocess.run(
        ["ssh", "-i", str(registry.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={registry.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "ControlMaster=no", "-o", "ControlPath=none", f"{user}@{host}", command],
        capture_output=True, text=True, timeout=60, check=False)


def test_nodes_refuse_root_and_take_the_sudo_user(sudo_fleet: Fleet) -> None:
    registry = load_registry(sudo_fleet.registry)
    assert registry.become == "sudo"
    assert {agent.ssh_user for agent in registry} == {USER}
    for host in hosts(sudo_fleet).values():
        assert login(sudo_fleet, "root", host, "true").returncode == 255
        done = login(sudo_fleet, USER, host, "sudo -n id -un; sudo -n sshd -T")
        assert done.stdout.startswith("root\n"), done.stderr
        assert "permitrootlogin no" in done.stdout


def test_cold_and_no_change_deploys_over_sudo(sudo_fleet: Fleet) -> None:
    done = sudo_fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    record = sudo_fleet.record(done.stdout)
    RUN["first"] = record["release"]
    assert {name: entry["status"] for name, entry in record["hosts"].items()} == {
        name: "ok" for name in hosts(sudo_fleet)}
    for agent, host in hosts(sudo_fleet).items():
        body = requests.get(f"http://{host}:8646/health", timeout=5).json()
        assert (body["agent"], body["status"], body["release"]) == (
            agent, "ok", RUN["first"])
    # the sudo user's upload folder is private; no upload is left behind in it
    listing = sudo_fleet.ssh("bezalel", "sudo -n stat -c '%U %a' /var/lib/fleet/.upload; "
                                        "sudo -n ls -A /var/lib/fleet/.upload")
    assert listing == f"{USER} 700\n"
    again = sudo_fleet.run("deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    entries = sudo_fleet.record(again.stdout)["hosts"]
    assert {name: (entry["changed"], entry["restarted"]) for name, entry in entries.items()} \
        == {name: ([], False) for name in entries}


def test_status_and_live_checks_over_sudo(sudo_fleet: Fleet) -> None:
    status = sudo_fleet.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    passed = sudo_fleet.run("test")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    rows = [line.split() for line in passed.stdout.splitlines() if line.startswith("    ")]
    assert {row[0]: row[1] for row in rows} == {name: "ok" for name in hosts(sudo_fleet)}
    assert all(int(row[2]) >= 10 and row[4:6] == ["0", "failed"] for row in rows)


def test_rollback_over_sudo(sudo_fleet: Fleet) -> None:
    git = ["git", "-C", str(sudo_fleet.clone), "-c", "user.name=test",
           "-c", "user.email=test@localhost"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "second release"], check=True)
    second = sudo_fleet.run("deploy")
    assert second.returncode == 0, second.stdout + second.stderr
    assert sudo_fleet.record(second.stdout)["release"] != RUN["first"]
    back = sudo_fleet.run("rollback", "bezalel")
    assert back.returncode == 0, back.stdout + back.stderr
    entry = sudo_fleet.record(back.stdout)["hosts"]["bezalel"]
    assert (entry["status"], entry["release"]) == ("ok", RUN["first"])
    body = requests.get(f"http://{hosts(sudo_fleet)['bezalel']}:8646/health", timeout=5).json()
    assert (body["status"], body["release"]) == ("ok", RUN["first"])
