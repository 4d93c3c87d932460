"""Fixtures of the live testinfra suite.

Two ways in:
- ``fleet test`` sets ``FLEET_LIVE_REGISTRY`` and ``FLEET_LIVE_AGENT``: the suite checks that
  one agent of that registry, as deployed (no deploy here);
- otherwise (the project's own test run): the session lab, deployed once from this checkout,
  every agent of it.
Either way the node is reached over ``ssh://`` with the deploy's SSH settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from testinfra.host import Host

from fleet.control.livetest import LIVE_AGENT_ENV, LIVE_REGISTRY_ENV, testinfra_target
from fleet.core.registry import Agent, Registry, load_registry

REPO = Path(__file__).resolve().parents[2]
LIVE_AGENT = os.environ.get(LIVE_AGENT_ENV)
AGENTS = [LIVE_AGENT] if LIVE_AGENT else list(load_registry(REPO / "registry.yaml").agents)


@dataclass(frozen=True)
class Node:
    """One agent's node: its registry entry, the registry, and a testinfra host on it."""

    agent: Agent
    registry: Registry
    host: Host


@pytest.fixture(scope="module")
def deployed(request: pytest.FixtureRequest) -> Path:
    """The registry to check: ``fleet test``'s, or the session lab after a ``fleet deploy``
    of this checkout that succeeded."""
    given = os.environ.get(LIVE_REGISTRY_ENV)
    if given:
        return Path(given)
    lab_registry: Path = request.getfixturevalue("lab_registry")
    env = {**os.environ, "FLEET_REGISTRY": str(lab_registry)}
    env.pop("FLEET_BROKEN_RELEASE", None)
    done = subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                           "deploy"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return lab_registry


@pytest.fixture(scope="module", params=AGENTS)
def node(request: pytest.FixtureRequest, deployed: Path) -> Node:
    """The node of one agent, reached like the deploy reaches it."""
    registry = load_registry(deployed)
    agent = registry.get(request.param)
    spec, options = testinfra_target(agent, registry)
    return Node(agent=agent, registry=registry, host=testinfra.get_host(spec, **options))
