"""`fleet status` on real lab nodes: real SSH with the lab key and pinned host keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


def test_status_json_lists_every_lab_agent_with_ssh_ok(lab_registry: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "status", "--json"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "FLEET_REGISTRY": str(lab_registry)},
    )
    data = json.loads(done.stdout)
    agents = data["agents"]
    assert [agent["agent"] for agent in agents] == ["ezra-primary", "bezalel", "allegro"]
    for agent in agents:
        assert agent["ssh"] == "ok", agent
        assert agent["system"] in ("running", "degraded"), agent
    assert done.returncode == (0 if data["healthy"] else 1)
    assert data["healthy"] == all(agent["health"] == "ok" for agent in agents)


def test_the_probe_negotiates_its_cheap_key_exchange_with_a_real_node(
        lab_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's sshd agrees to the probe's first choice its client knows (curve25519 with
    OpenSSH 9.2, where the client's default is the costly sntrup761 hybrid)."""
    from fleet.control.status import PROBE_SCRIPT, probe_kex, ssh_command
    from fleet.core.registry import load_registry

    monkeypatch.setenv("FLEET_SSH_CONTROL_DIR", str(tmp_path))
    registry = load_registry(lab_registry)
    agent = registry.get("bezalel")
    chosen = probe_kex()
    assert chosen is not None

    def negotiated(probe: bool) -> str:
        """The key exchange of a connection of its own (no master: ssh -v shows it)."""
        argv = ssh_command(agent, registry, 10.0, probe=probe)
        command: list[str] = []
        for arg in argv[:-1]:
            if arg.startswith("Control"):  # ssh takes the first value: drop them all
                command.pop()  # its "-o"
            else:
                command.append(arg)
        command += ["-v", argv[-1], PROBE_SCRIPT]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=True)
        assert "running" in done.stdout or "degraded" in done.stdout, done.stdout
        (line,) = [line for line in done.stderr.splitlines() if "kex: algorithm:" in line]
        return line.split("kex: algorithm:")[1].strip()

    assert negotiated(probe=True) == chosen[1:].split(",")[0]
