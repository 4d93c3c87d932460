"""A registry with a non-default SSH port and user still gives reachable lab nodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab.registry_writer import known_hosts_text, plan_nodes, ssh_config_text

REGISTRY = """\
fleet:
  become: sudo
wizards:
  solo:
    host: 192.0.2.7
    role: worker
    model: some/model
    ssh_port: 2222
    ssh_user: deploy
"""


@pytest.fixture
def custom_registry(tmp_path: Path) -> Path:
    (tmp_path / "souls").mkdir()
    (tmp_path / "souls/solo.md").write_text("# solo\n")
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return path


def test_files_use_the_agent_port(custom_registry: Path, tmp_path: Path) -> None:
    plan = plan_nodes(load_registry(custom_registry), None, 7)
    assert known_hosts_text(plan, {"solo": "ssh-ed25519 AAAA"}) == (
        "[10.231.7.10]:2222,[solo]:2222 ssh-ed25519 AAAA\n")
    assert "    Port 2222\n" in ssh_config_text(plan, tmp_path, tmp_path / "cm")


@pytest.mark.lab
def test_node_listens_on_the_port_and_has_the_user(custom_registry: Path,
                                                   spare_lab: str) -> None:
    registry = load_registry(lab.up(load_registry(custom_registry), lab=spare_lab))
    solo = registry.get("solo")
    assert (solo.ssh_port, solo.ssh_user) == (2222, "deploy")
    done = subprocess.run(
        ["ssh", "-i", str(registry.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={registry.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-p", "2222", f"deploy@{solo.host}", "sudo -n id -un"],
        capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "root\n"), done.stderr
