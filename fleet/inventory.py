"""Turn the registry into pyinfra inventory groups and host data."""

from __future__ import annotations

import os
import re
from typing import Any

from fleet.hosts import (
    TRUST_HINT,
    HostKeyError,
    host_pattern,
    known_hosts_path,
    require_known_hosts,
    unknown_agents,
)
from fleet.registry import ROLES, Agent, Registry
from fleet.sshdeadline import PARAMIKO_CONNECT_KWARGS

RESERVED_GROUPS = {"all", "inventory", *ROLES}
SSH_CONFIG_ENV = "FLEET_SSH_CONFIG"
"""An ssh_config file for the deploy's connections (pyinfra's ``ssh_config_file``)."""
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
    if registry.become == "sudo":
        data["_sudo"] = True  # pyinfra's global argument, as host data: every operation and fact
    # Host keys are always checked, against the registry's known_hosts only; with none set,
    # against an empty file: every connection is refused, nothing is trusted on first use
    # (`fleet hosts scan` records the keys).
    pinned = known_hosts_path(registry)
    data["ssh_known_hosts_file"] = str(pinned.resolve()) if pinned else os.devnull
    data["ssh_strict_host_key_checking"] = "yes"
    data["ssh_paramiko_connect_kwargs"] = PARAMIKO_CONNECT_KWARGS  # a vanished node fails
    ssh_config = os.environ.get(SSH_CONFIG_ENV)
    if ssh_config:  # e.g. a ProxyJump bastion in front of a region; host keys stay pinned
        data["ssh_config_file"] = ssh_config
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
