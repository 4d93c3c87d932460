"""What the registry and the repository require of each agent now: its config file and hash,
its soul's hash. The deploy writes these; status, drift and the dashboard compare the node's
answers with them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fleet.registry import Agent, Registry


def config_json(agent: Agent) -> str:
    """The agent's ``config.json`` as the deploy writes it; its sha256 is the config hash
    ``/health`` reports."""
    data: dict[str, Any] = {"agent": agent.name, "role": agent.role, "model": agent.model,
                            "gateway_port": agent.gateway_port,
                            "capabilities": list(agent.capabilities),
                            "provider": agent.provider, "region": agent.region,
                            "config": agent.config}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def config_hash(agent: Agent) -> str:
    """sha256 of :func:`config_json`."""
    return hashlib.sha256(config_json(agent).encode()).hexdigest()


def soul_sha256(registry: Registry, agent: Agent) -> str | None:
    """sha256 of the agent's soul file in the repository (None when it cannot be read)."""
    try:
        return hashlib.sha256(registry.soul_path(agent).read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass(frozen=True)
class Expected:
    """One agent's required config and soul hashes (the release comes from the deploy)."""

    config_hash: str
    soul_sha256: str | None


def expected(registry: Registry, agent: Agent) -> Expected:
    """What ``agent`` must run now, by the registry and the soul file."""
    return Expected(config_hash=config_hash(agent), soul_sha256=soul_sha256(registry, agent))
