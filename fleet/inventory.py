"""Turn the registry into pyinfra inventory groups and host data."""

from __future__ import annotations

import re
from typing import Any

from fleet.registry import ROLES, Agent, Registry

RESERVED_GROUPS = {"all", "inventory", *ROLES}
HostEntry = tuple[str, dict[str, Any]]


def host_data(agent: Agent, registry: Registry) -> dict[str, Any]:
    """pyinfra host data for one agent: SSH connection settings plus the agent's registry fields."""
    data: dict[str, Any] = {
        "ssh_hostname": agent.host,
        "ssh_user": agent.ssh_user,
        "ssh_port": agent.ssh_port,
        "agent_name": agent.name,
        "fleet_name": registry.name,
        "registry_path": str(registry.path.resolve()),
        "soul_path": str(registry.soul_path(agent).resolve()),
        **{f"agent_{key}": value for key, value in agent.to_dict().items()},
    }
    if registry.ssh_key:
        data["ssh_key"] = registry.ssh_key
    if registry.known_hosts:
        data["ssh_known_hosts_file"] = registry.known_hosts
        data["ssh_strict_host_key_checking"] = "yes"
    return data


def capability_group(capability: str) -> str:
    """Inventory group name for a capability (prefixed when it would clash with a role)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", capability)
    return f"capability-{name}" if name in RESERVED_GROUPS else name


def inventory_groups(registry: Registry) -> dict[str, list[HostEntry]]:
    """Groups by role and by capability; every host entry carries its full host data."""
    entries = {agent.name: (agent.name, host_data(agent, registry)) for agent in registry}
    groups: dict[str, list[HostEntry]] = {role: [] for role in ROLES}
    for agent in registry:
        groups[agent.role].append(entries[agent.name])
        for capability in agent.capabilities:
            groups.setdefault(capability_group(capability), []).append(entries[agent.name])
    return groups
