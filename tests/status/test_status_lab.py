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
