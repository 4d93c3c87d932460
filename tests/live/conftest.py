"""Fixtures of the live testinfra suite: the session lab, deployed once from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra
import yaml

REPO = Path(__file__).resolve().parents[2]
AGENTS = list(yaml.safe_load((REPO / "registry.yaml").read_text())["wizards"])


@pytest.fixture(scope="module")
def deployed(lab_registry: Path) -> Path:
    """The lab registry, after a ``fleet deploy`` of this checkout that succeeded."""
    env = {**os.environ, "FLEET_REGISTRY": str(lab_registry)}
    env.pop("FLEET_BROKEN_RELEASE", None)
    done = subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                           "deploy"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return lab_registry


@pytest.fixture(scope="module", params=AGENTS)
def node(request: pytest.FixtureRequest, deployed: Path) -> tuple[str, testinfra.host.Host]:
    """(agent name, testinfra host over ``ssh://`` with the lab's ssh_config)."""
    config = deployed.parent / "ssh_config"
    return request.param, testinfra.get_host(f"ssh://{request.param}", ssh_config=str(config))
