"""``up``: turn a registry into running nodes, cleaning up after itself on any failure."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleet.errors import LabError
from fleet.lab import keys, network, node
from fleet.lab.prereqs import raise_host_limits
from fleet.lab.registry_writer import (
    KNOWN_HOSTS,
    REGISTRY_FILE,
    SSH_CONFIG,
    LabNode,
    known_hosts_text,
    lab_registry_yaml,
    plan_nodes,
    ssh_config_text,
)
from fleet.lab.rootfs import ensure_base
from fleet.lab.state import NodeRecord, write_records
from fleet.registry import Registry

FAIL_ENV = "FLEET_LAB_FAIL_NODE"
"""Test hook: the node with this name fails right after it was started."""
MAX_WORKERS = 16
MAX_READY_WORKERS = 64
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default progress sink: say nothing."""


def bring_up(registry: Registry, nodes: int | None, lab: str, lab_path: Path,
             progress: Progress = _quiet) -> Path:
    """Build the lab in ``lab_path`` (which must be down); the caller tears down on failure."""
    lab_path.mkdir(parents=True, exist_ok=True)
    for key, value in raise_host_limits().items():
        progress(f"raised {key} to {value} (many nodes need more inotify instances)")
    base = ensure_base(progress)
    index = network.allocate_index(lab_path)
    plan = plan_nodes(registry, nodes, index)
    records = [NodeRecord(n.name, n.ip, n.position, network.netns_name(index, n.name))
               for n in plan]
    write_records(lab_path, index, records)
    lab_key = keys.ensure_lab_key(lab_path, lab)
    host_keys = {n.name: keys.ensure_host_key(lab_path, n.name) for n in plan}
    write_files(registry, plan, lab, lab_path,
                {name: keys.public_key(key) for name, key in host_keys.items()})
    network.create_bridge(index)
    progress(f"booting {len(plan)} nodes on {network.bridge_name(index)} "
             f"({network.SUBNET_PREFIX}.{index}.0/24)")
    hosts = {n.name: n.ip for n in plan}
    lab_public = keys.public_key(lab_key)
    workers = min(MAX_WORKERS, len(plan))

    def start(item: LabNode) -> int:
        paths = node.NodePaths.of(lab_path, item.name)
        netns = network.create_node_network(index, item.position, item.name)
        node.mount_overlay(paths, base)
        node.inject_identity(paths.root, item.name, host_keys[item.name], lab_public,
                             item.agent.ssh_port, hosts)
        pid = node.start(paths, lab, item.name, netns)
        if os.environ.get(FAIL_ENV) == item.name:
            raise LabError(f"node {item.name}: boot failure injected by {FAIL_ENV}")
        return pid

    with ThreadPoolExecutor(workers) as pool:
        pids = dict(zip(hosts, pool.map(start, plan), strict=True))

    def ready(item: LabNode) -> list[str]:
        paths = node.NodePaths.of(lab_path, item.name)
        return node.wait_ready(paths, lab_path / SSH_CONFIG, item.name, pids[item.name])

    with ThreadPoolExecutor(min(MAX_READY_WORKERS, len(plan))) as pool:
        failed = dict(zip(hosts, pool.map(ready, plan), strict=True))
    for name, units in failed.items():
        if units:
            progress(f"node {name} is degraded; failed units: {', '.join(units)}")
    return lab_path / REGISTRY_FILE


def write_files(registry: Registry, plan: list[LabNode], lab: str, lab_path: Path,
                host_keys: dict[str, str]) -> None:
    """known_hosts, ssh_config and the lab registry."""
    (lab_path / KNOWN_HOSTS).write_text(known_hosts_text(plan, host_keys))
    (lab_path / SSH_CONFIG).write_text(ssh_config_text(plan, lab_path))
    (lab_path / REGISTRY_FILE).write_text(lab_registry_yaml(registry, plan, lab, lab_path))
