"""Pure builders for the lab's files: node plan, lab registry, ssh_config, known_hosts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fleet.control.hosts import SshSettings
from fleet.core.errors import LabError
from fleet.core.registry import Agent, Registry, regions_data
from fleet.lab.keys import LAB_KEY
from fleet.lab.network import MAX_NODES, node_ip
from fleet.lab.rootfs import SUITE, check_suite

KNOWN_HOSTS = "known_hosts"
SOULS_DIR = "souls"  # the lab's copies of the souls: a registry's souls live inside its folder
SSH_CONFIG = "ssh_config"
REGISTRY_FILE = "registry.yaml"


@dataclass(frozen=True)
class LabNode:
    """One planned lab node: its registry entry (host rewritten) and its position."""

    position: int
    agent: Agent
    soul: Path
    release: str = SUITE  # the Debian release the node boots

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def ip(self) -> str:
        return self.agent.host


def plan_nodes(registry: Registry, nodes: int | None, index: int,
               ssh_user: str | None = None,
               releases: dict[str, str] | None = None,
               regions: list[str] | None = None) -> list[LabNode]:
    """The first ``nodes`` agents (all by default) plus extra ``worker-NN`` when asked for more;
    with ``ssh_user``, every node is reached as that (sudo) user. ``releases`` maps a node
    name (or ``""``: every node) to the Debian release it boots (default bookworm).
    ``regions`` gives each node position its region (and the node count)."""
    if regions and nodes is not None and nodes != len(regions):
        raise LabError(f"-n {nodes} does not match the {len(regions)} nodes of --regions",
                       hint="Leave out -n: --regions says how many nodes each region has.")
    count = len(regions) if regions else len(registry) if nodes is None else nodes
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"-n {count} is out of range: a lab has 1 to {MAX_NODES} nodes",
                       hint=f"Pass -n between 1 and {MAX_NODES}.")
    agents = list(registry)
    template = ([a for a in agents if a.role == "worker"] or agents)[-1]
    planned: list[tuple[Agent, Path]] = [(a, registry.soul_path(a)) for a in agents[:count]]
    taken = set(registry.agents)
    number = len(agents)
    while len(planned) < count:
        number += 1
        name = f"worker-{number:02d}"
        if name in taken:
            continue
        extra = Agent(name=name, host="", role="worker", model=template.model,
                      health_endpoint="", capabilities=(),
                      description=f"Lab extra worker {number}.",
                      gateway_port=template.gateway_port, ssh_user=template.ssh_user,
                      ssh_port=template.ssh_port, soul=template.soul,
                      region=template.region, provider=template.provider,
                      provider_url=template.provider_url, provider_key=template.provider_key,
                      runtime=template.runtime)
        planned.append((extra, registry.soul_path(template)))
    result = []
    for position, (agent, soul) in enumerate(planned):
        ip = node_ip(index, position)
        lab_agent = replace(agent, host=ip, soul=str(soul.resolve()),
                            health_endpoint=f"http://{ip}:{agent.gateway_port}/health",
                            ssh_user=ssh_user or agent.ssh_user,
                            region=regions[position] if regions else agent.region)
        result.append(LabNode(position, lab_agent, soul.resolve()))
    return _with_releases(result, releases or {})


def _with_releases(plan: list[LabNode], releases: dict[str, str]) -> list[LabNode]:
    """The plan with each node's Debian release from ``releases`` (checked)."""
    names = [node.name for node in plan]
    for name, suite in releases.items():
        check_suite(suite)
        if name and name not in names:
            raise LabError(f"--release {name}={suite}: the lab has no node {name!r} "
                           f"(nodes: {', '.join(names)})",
                           hint="Name a node of the lab, or pass --release SUITE for all.")
    default = releases.get("", SUITE)
    return [replace(node, release=releases.get(node.name, default)) for node in plan]


def lab_registry_data(registry: Registry, nodes: list[LabNode], lab: str,
                      lab_path: Path) -> dict[str, Any]:
    """The lab registry as plain data, valid for :func:`fleet.core.registry.load_registry`."""
    fleet: dict[str, Any] = {"name": f"lab-{lab}", "ssh_key": str(lab_path / LAB_KEY),
                             "known_hosts": str(lab_path / KNOWN_HOSTS)}
    if registry.repo_url:
        fleet["repo_url"] = registry.repo_url
    regions = lab_regions(registry, nodes)
    if regions:
        fleet["regions"] = regions_data(tuple(registry.region(name) for name in regions))
    if registry.become or any(node.agent.ssh_user != "root" for node in nodes):
        fleet["become"] = registry.become or "sudo"  # lab users get passwordless sudo
    return {"fleet": fleet, "wizards": {node.name: {**node.agent.to_dict(),
                                                     "soul": lab_soul(node.name)}
                                        for node in nodes}}


def lab_regions(registry: Registry, nodes: list[LabNode]) -> list[str]:
    """The lab's regions in rollout order: those of ``fleet.regions`` its nodes are in."""
    used = {node.agent.region for node in nodes}
    return [region.name for region in registry.regions if region.name in used]


def lab_soul(name: str) -> str:
    """The soul path in the lab registry (relative: a copy in the lab's folder)."""
    return f"{SOULS_DIR}/{name}.md"


def lab_registry_yaml(registry: Registry, nodes: list[LabNode], lab: str,
                      lab_path: Path) -> str:
    """The lab registry file's text."""
    header = (f"# Lab registry written by `fleet lab up --lab {lab}` from {registry.path}.\n"
              f"# Use it with: export FLEET_REGISTRY={lab_path / REGISTRY_FILE}\n")
    data = lab_registry_data(registry, nodes, lab, lab_path)
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def ssh_config_text(nodes: list[LabNode], lab_path: Path, control_dir: Path,
                    root_login: bool = True) -> str:
    """An ssh_config with one ``Host`` per node (for ``ssh -F`` and testinfra's ``ssh://``):
    as root, or as each node's ``ssh_user`` when the nodes refuse root logins; masters
    shared through sockets in ``control_dir``."""
    blocks = []
    for node in nodes:  # the deploy's settings (fleet.control.hosts), with shared masters
        settings = SshSettings(user="root" if root_login else node.agent.ssh_user,
                               host=node.ip, port=node.agent.ssh_port,
                               known_hosts=str(lab_path / KNOWN_HOSTS),
                               key=str(lab_path / LAB_KEY))
        blocks.append(settings.config_block(node.name, [
            "ControlMaster=auto", f"ControlPath={control_dir}/%C", "ControlPersist=60s"]))
    return "\n".join(blocks)


def known_hosts_text(nodes: list[LabNode], host_keys: dict[str, str]) -> str:
    """known_hosts lines pinning each node's host key under its IP and name."""
    lines = []
    for node in nodes:
        port = node.agent.ssh_port
        hosts = [node.ip, node.name] if port == 22 else [f"[{node.ip}]:{port}",
                                                          f"[{node.name}]:{port}"]
        lines.append(f"{','.join(hosts)} {host_keys[node.name]}")
    return "\n".join(lines) + "\n"
