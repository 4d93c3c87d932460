"""Turn the registry into pyinfra inventory groups and host data."""

from __future__ import annotations

import re
from typing import Any

from fleet.control.hosts import (
    TRUST_HINT,
    HostKeyError,
    host_pattern,
    require_known_hosts,
    ssh_settings,
    unknown_agents,
)
from fleet.control.sshsocket import PARAMIKO_CONNECT_KWARGS
from fleet.core.registry import ROLES, Agent, Registry

RESERVED_GROUPS = {"all", "inventory", *ROLES}
HostEntry = tuple[str, dict[str, Any]]


def host_data(agent: Agent, registry: Registry) -> dict[str, Any]:
    """pyinfra host data for one agent: SSH connection settings plus the agent's registry fields."""
    data: dict[str, Any] = {
        # Host keys are always checked, against the registry's known_hosts only; with none
        # set, against an empty file: every connection is refused, nothing is trusted on
        # first use (`fleet hosts scan` records the keys). The same settings as status and
        # `fleet test` (fleet.control.hosts.ssh_settings).
        **ssh_settings(agent, registry).pyinfra_data(),
        "agent_name": agent.name,
        "fleet_name": registry.name,
        "registry_path": str(registry.path.resolve()),
        "soul_path": str(registry.soul_path(agent).resolve()),
        **{f"agent_{key}": value for key, value in agent.to_dict().items()},
    }
    if registry.become == "sudo":
        data["_sudo"] = True  # pyinfra's global argument, as host data: every operation and fact
    data["ssh_paramiko_connect_kwargs"] = PARAMIKO_CONNECT_KWARGS  # a vanished node fails
    return data


def capability_group(capability: str) -> str:
    """Inventory group name for a capability (prefixed when it would clash with a role)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", capability)
    return f"capability-{name}" if name in RESERVED_GROUPS else name


def host_key_warnings(registry: Registry) -> list[str]:
    """What pyinfra's output should say before it refuses hosts whose key is not pinned (it
    refuses them when connecting, without saying how to trust a key)."""
    try:
        path = require_known_hosts(registry)
    except HostKeyError as exc:
        return [f"{exc} (Hint: {exc.hint})"]
    return [f"{path}: no host key pinned for {agent.name} ({host_pattern(agent)}): it will be "
            f"refused. {TRUST_HINT.format(names=agent.name)}"
            for agent in unknown_agents(path, registry)]


def inventory_groups(registry: Registry) -> dict[str, list[HostEntry]]:
    """Groups by role and by capability; every host entry carries its full host data. Hosts
    whose key is not pinned are kept (pyinfra refuses them when connecting; ``inventory.py``
    says why first, see :func:`host_key_warnings`)."""
    entries = {agent.name: (agent.name, host_data(agent, registry)) for agent in registry}
    groups: dict[str, list[HostEntry]] = {role: [] for role in ROLES}
    for agent in registry:
        groups[agent.role].append(entries[agent.name])
        for capability in agent.capabilities:
            groups.setdefault(capability_group(capability), []).append(entries[agent.name])
    return groups
