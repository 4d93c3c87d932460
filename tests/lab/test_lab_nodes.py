"""Real nodes: SSH with pinned host keys, systemd state, the lab registry and inventory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fleet import lab
from fleet.core.registry import load_registry
from tests.lab_fixtures import REPO

pytestmark = pytest.mark.lab


def ssh(registry_path: Path, host: str, command: str, user: str = "root") -> str:
    """Run ``command`` on a lab node with the lab key and strict host key checking."""
    registry = load_registry(registry_path)
    result = subprocess.run(
        ["ssh", "-i", str(registry.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={registry.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "GlobalKnownHostsFile=/dev/null", f"{user}@{host}", command],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.strip()


def test_three_nodes_run_systemd_and_answer_ssh(lab_registry: Path) -> None:
    registry = load_registry(lab_registry)
    assert list(registry.agents) == ["ezra-primary", "bezalel", "allegro"]
    for agent in registry:
        assert ssh(lab_registry, agent.host, "hostname") == agent.name
        assert ssh(lab_registry, agent.host, "systemctl is-system-running") in (
            "running", "degraded")


def test_status_lists_running_nodes(session_lab_name: str, lab_registry: Path) -> None:
    nodes = lab.status(session_lab_name)
    registry = load_registry(lab_registry)
    assert [(n.name, n.ip, n.running) for n in nodes] == [
        (a.name, a.host, True) for a in registry]
    assert all(n.pid for n in nodes)


def test_fleet_admin_has_passwordless_sudo(lab_registry: Path) -> None:
    host = load_registry(lab_registry).get("bezalel").host
    assert ssh(lab_registry, host, "sudo -n whoami", user="fleet-admin") == "root"


def test_pyinfra_inventory_lists_lab_hosts(lab_registry: Path) -> None:
    env = {**os.environ, "FLEET_REGISTRY": str(lab_registry)}
    result = subprocess.run(["pyinfra", "inventory.py", "debug-inventory"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    out = result.stdout + result.stderr
    registry = load_registry(lab_registry)
    for agent in registry:
        assert f"[{agent.name}]" in out
        assert f'"ssh_hostname": "{agent.host}"' in out
    assert "--> Groups: orchestrator, ansible-deploy, webhook-receiver" in out
    assert f'"ssh_known_hosts_file": "{registry.known_hosts}"' in out
