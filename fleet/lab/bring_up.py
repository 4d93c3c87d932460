"""``up``: turn a registry into running nodes, cleaning up after itself on any failure."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from fleet.core.errors import LabError
from fleet.core.registry import Region, Registry
from fleet.lab import keys, model, network, node
from fleet.lab import regions as lab_regions
from fleet.lab.commands import Cancelled
from fleet.lab.paths import ssh_control_dir
from fleet.lab.prereqs import raise_host_limits
from fleet.lab.registry_writer import (
    KNOWN_HOSTS,
    REGISTRY_FILE,
    SSH_CONFIG,
    LabNode,
    known_hosts_text,
    lab_registry_yaml,
    lab_soul,
    plan_nodes,
    ssh_config_text,
)
from fleet.lab.rootfs import ensure_base
from fleet.lab.state import NodeRecord, write_records

FAIL_ENV = "FLEET_LAB_FAIL_NODE"
"""Test hook: the node with this name fails right after it was started."""
MAX_WORKERS = 16
MAX_READY_WORKERS = 64
Progress = Callable[[str], None]
T = TypeVar("T")


def _quiet(_: str) -> None:
    """Default progress sink: say nothing."""


def thread_prefix(lab: str) -> str:
    """Name prefix of the worker threads of ``up`` for ``lab`` (to join them on failure)."""
    return f"fleet-lab-{lab}"


def run_parallel(fn: Callable[[LabNode], T], items: list[LabNode], workers: int,
                 prefix: str, abort: threading.Event) -> list[T]:
    """``fn`` over ``items`` in threads; on the first error set ``abort`` and wait for all."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    futures: list[Future[T]] = []
    try:
        futures = [pool.submit(fn, item) for item in items]
        return [future.result() for future in futures]
    except BaseException:
        abort.set()
        raise
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)


def join_threads(prefix: str, timeout: float = 180) -> None:
    """Wait for every thread named ``prefix...`` (also ones an interrupt left unjoined)."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def bring_up(registry: Registry, nodes: int | None, lab: str, lab_path: Path,
             progress: Progress = _quiet, cancel: threading.Event | None = None,
             ssh_user: str | None = None, releases: dict[str, str] | None = None,
             with_model: bool = False, regions: list[tuple[str, int]] | None = None,
             latency_ms: float = 0, jitter_ms: float = 0,
             model_name: str | None = None) -> Path:
    """Build the lab in ``lab_path`` (which must be down); the caller tears down on failure.

    Setting ``cancel`` stops the start-up at the next checkpoint with :class:`Cancelled`.
    With ``ssh_user`` (not root) every node has that user with passwordless sudo and refuses
    root logins; the lab registry says ``become: sudo``. ``releases`` picks each node's Debian
    release (see :func:`plan_nodes`); each release's base rootfs is built once and cached.
    ``with_model`` starts the lab model server on the bridge (:mod:`fleet.lab.model`) with the
    model ``model_name`` (default: :func:`fleet.lab.model.chosen`) and points every agent
    without a chat API of its own at it. ``regions`` (``[("eu", 3), ...]``)
    gives the lab that many nodes per region (the lab registry lists them as ``fleet.regions``);
    nodes of a lab with regions get ``latency_ms`` (± ``jitter_ms``) per round trip to other
    regions and to the controller (:mod:`fleet.lab.regions`).
    """
    root_login = ssh_user in (None, "root")
    abort = threading.Event()

    def checkpoint() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"start of lab {lab!r} was cancelled")
        if abort.is_set():
            raise Cancelled(f"start of lab {lab!r} stopped: another node failed")

    method = lab_regions.latency_method() if latency_ms else ""
    if regions:
        registry = replace(registry, regions=tuple(Region(name) for name, _ in regions))
    lab_path.mkdir(parents=True, exist_ok=True)
    for key, value in raise_host_limits().items():
        progress(f"raised {key} to {value} (many nodes need more inotify instances)")
    lab_model = model.chosen(model_name) if with_model else None
    index = network.allocate_index(lab_path)
    model.remember(lab_path, lab_model)
    if lab_model is not None:
        model.ensure_installed(progress, lab_model)
        registry = model.with_lab_provider(registry, model.base_url(index), lab_model)
    plan = plan_nodes(registry, nodes, index, ssh_user, releases,
                      lab_regions.assign(regions) if regions else None)
    in_region = {n.name: n.agent.region for n in plan if registry.regions}
    bases = {suite: ensure_base(progress, suite, cancel)
             for suite in sorted({n.release for n in plan})}
    checkpoint()
    records = [NodeRecord(n.name, n.ip, n.position, network.netns_name(index, n.name),
                          in_region.get(n.name)) for n in plan]
    write_records(lab_path, index, records)
    lab_key = keys.ensure_lab_key(lab_path, lab)
    host_keys = {n.name: keys.ensure_host_key(lab_path, n.name) for n in plan}
    write_files(registry, plan, lab, lab_path, fresh_control_dir(index),
                {name: keys.public_key(key) for name, key in host_keys.items()}, root_login)
    network.create_bridge(index)
    checkpoint()
    if lab_model is not None:
        progress(f"starting the lab model server ({lab_model.alias}) on "
                 f"{model.base_url(index)}")
        model.start(lab_path, index, progress, lab_model)
    progress(f"booting {len(plan)} nodes on {network.bridge_name(index)} "
             f"({network.SUBNET_PREFIX}.{index}.0/24)")
    hosts = {n.name: n.ip for n in plan}
    lab_public = keys.public_key(lab_key)
    prefix = thread_prefix(lab)

    def start(item: LabNode) -> int:
        checkpoint()
        paths = node.NodePaths.of(lab_path, item.name)
        netns = network.create_node_network(index, item.position, item.name)
        if latency_ms and in_region.get(item.name):
            peers = [n.ip for n in plan if n.name != item.name
                     and in_region.get(n.name) == in_region[item.name]]
            if method == "netem":
                lab_regions.shape(netns, network.controller_ip(index), peers, latency_ms,
                                  jitter_ms)
            else:
                others = [n.ip for n in plan if in_region.get(n.name) != in_region[item.name]]
                paths.base.mkdir(parents=True, exist_ok=True)
                lab_regions.delay(netns, item.ip, network.controller_ip(index), others,
                                  latency_ms, jitter_ms, paths.base / "delayline.log")
        node.mount_overlay(paths, bases[item.release])
        node.inject_identity(paths.root, item.name, host_keys[item.name], lab_public,
                             item.agent.ssh_port, item.agent.ssh_user, hosts, root_login)
        checkpoint()
        pid = node.start(paths, lab, item.name, netns)
        if os.environ.get(FAIL_ENV) == item.name:
            raise LabError(f"node {item.name}: boot failure injected by {FAIL_ENV}")
        return pid

    started = run_parallel(start, plan, min(MAX_WORKERS, len(plan)), prefix, abort)
    pids = dict(zip(hosts, started, strict=True))

    def ready(item: LabNode) -> list[str]:
        paths = node.NodePaths.of(lab_path, item.name)
        return node.wait_ready(paths, lab_path / SSH_CONFIG, item.name, pids[item.name],
                               checkpoint=checkpoint)

    failed = run_parallel(ready, plan, min(MAX_READY_WORKERS, len(plan)), prefix, abort)
    for name, units in zip(hosts, failed, strict=True):
        if units:
            progress(f"node {name} is degraded; failed units: {', '.join(units)}")
    return lab_path / REGISTRY_FILE


def fresh_control_dir(index: int) -> Path:
    """Lab ``index``'s SSH socket folder, emptied: a new lab never meets an old master."""
    control = ssh_control_dir(index)
    shutil.rmtree(control, ignore_errors=True)
    control.mkdir(mode=0o700, parents=True)
    return control


def write_files(registry: Registry, plan: list[LabNode], lab: str, lab_path: Path,
                control_dir: Path, host_keys: dict[str, str], root_login: bool = True) -> None:
    """known_hosts, ssh_config, copies of the souls and the lab registry."""
    for item in plan:
        soul = lab_path / lab_soul(item.name)
        soul.parent.mkdir(exist_ok=True)
        soul.write_bytes(item.soul.read_bytes())
    (lab_path / KNOWN_HOSTS).write_text(known_hosts_text(plan, host_keys))
    (lab_path / SSH_CONFIG).write_text(ssh_config_text(plan, lab_path, control_dir, root_login))
    (lab_path / REGISTRY_FILE).write_text(lab_registry_yaml(registry, plan, lab, lab_path))
