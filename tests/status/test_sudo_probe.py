"""``fleet status`` over a sudo-only fleet: the SSH probe logs in as ``ssh_user`` and asks
``systemctl is-system-running``, which needs no root, so no sudo is involved."""

from __future__ import annotations

from pathlib import Path

from fleet.control.status import ssh_command
from fleet.core.registry import parse_registry

REGISTRY = """\
fleet:
  become: sudo
wizards:
  solo: {host: 192.0.2.7, role: worker, model: m, ssh_user: deploy, ssh_port: 2222}
"""


def test_probe_logs_in_as_the_sudo_user_without_sudo(tmp_path: Path) -> None:
    registry = parse_registry(REGISTRY, tmp_path / "registry.yaml")
    command = ssh_command(registry.get("solo"), registry, 2.0)
    assert command[-1] == "deploy@192.0.2.7"
    assert command[1:3] == ["-p", "2222"]
    assert not [arg for arg in command if "sudo" in arg]
