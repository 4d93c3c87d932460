"""The local lab fleet: one systemd-nspawn node per agent, reachable over SSH.

``up`` writes ``<lab dir>/registry.yaml`` (hosts rewritten to lab IPs) and returns its path;
``down`` removes every node, namespace, mount, cgroup and the bridge; ``status`` lists nodes.
Several labs can run at once, each with its own folder, bridge and /24 subnet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleet.core.errors import LabError
from fleet.core.registry import Registry
from fleet.lab import processes, regions
from fleet.lab.bring_up import bring_up, join_threads, thread_prefix
from fleet.lab.claims import LabClaim, claim, in_use
from fleet.lab.network import read_index
from fleet.lab.node import NODES_DIR, NodePaths
from fleet.lab.paths import DEFAULT_LAB, lab_dir, lab_lock, lab_root
from fleet.lab.prereqs import check_prerequisites, require_root
from fleet.lab.registry_writer import REGISTRY_FILE, SSH_CONFIG
from fleet.lab.state import STATE_FILE, NodeRecord, read_records
from fleet.lab.teardown import teardown

__all__ = ["LabClaim", "NodeStatus", "claim", "down", "down_all", "in_use", "lab_dir", "lab_nodes",
           "labs", "partition", "registry_path", "ssh_config", "status", "up"]
OP_LOCK = "lab.lock"
"""Held while ``up`` or ``down`` works on a lab, so two of them never interleave."""
FAILED_UP_GRACE = 2.0
"""Seconds half-booted nodes get to power off when ``up`` failed (nothing to save there)."""


@dataclass(frozen=True)
class NodeStatus:
    """One lab node as ``fleet lab status`` shows it."""

    name: str
    ip: str
    running: bool
    pid: int | None
    region: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def up(registry: Registry, nodes: int | None = None, lab: str = DEFAULT_LAB,
       progress: Callable[[str], None] | None = None,
       cancel: threading.Event | None = None, ssh_user: str | None = None,
       releases: dict[str, str] | None = None, with_model: bool = False,
       regions: list[tuple[str, int]] | None = None, latency_ms: float = 0,
       jitter_ms: float = 0, model_name: str | None = None) -> Path:
    """Boot the lab from ``registry`` (first ``nodes`` agents, extra workers beyond) and
    return the lab registry path; with ``ssh_user``, nodes are reached as that sudo user and
    refuse root logins; ``releases`` maps node names (``""``: all) to the Debian release they
    boot (bookworm by default, trixie); ``with_model`` also serves the lab model
    ``model_name`` (see :mod:`fleet.lab.model`; default ``$FLEET_LAB_MODEL``, else
    ``smollm2``); ``regions`` boots that many nodes per region, with
    ``latency_ms`` (± ``jitter_ms``) between regions (see :mod:`fleet.lab.regions`). On any
    failure (or ``cancel`` being set) everything is
    torn down before raising."""
    check_prerequisites()
    path = lab_dir(lab)
    with lab_lock(path / OP_LOCK):
        if (path / STATE_FILE).exists():
            if any(node.running for node in status(lab)):
                raise LabError(f"lab {lab!r} is already up ({path / STATE_FILE} exists)",
                               hint=f"Run `fleet lab down --lab {lab}` first, or pick another "
                                    "--lab.")
            teardown(lab, path)  # left over from a killed run or a reboot: nothing runs
        try:
            return bring_up(registry, nodes, lab, path, progress or (lambda _: None), cancel,
                            ssh_user, releases, with_model, regions, latency_ms, jitter_ms,
                            model_name)
        except BaseException as exc:
            join_threads(thread_prefix(lab))  # no node thread may build while we tear down
            try:
                teardown(lab, path, grace=FAILED_UP_GRACE)
            except LabError as cleanup:
                raise LabError(f"{exc}; cleaning up also failed: {cleanup}",
                               hint=cleanup.hint) from exc
            raise


def down(lab: str = DEFAULT_LAB) -> None:
    """Stop the lab's nodes and remove all its run-time state (idempotent)."""
    require_root()
    path = lab_dir(lab)
    if not path.is_dir():
        return
    with lab_lock(path / OP_LOCK):
        teardown(lab, path)


def labs() -> list[str]:
    """Names of labs that have run-time state (up or half-built)."""
    root = lab_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (read_index(p) is not None or (p / NODES_DIR).exists()
                                     or (p / STATE_FILE).exists()))


def down_all(include_in_use: bool = False) -> tuple[list[str], list[str]]:
    """Take down every lab under the lab root; return (labs taken down, labs skipped).

    Labs claimed by a running session (see :func:`claim`) are skipped unless
    ``include_in_use``.
    """
    require_root()
    done, skipped = [], []
    for name in labs():
        if in_use(name) and not include_in_use:
            skipped.append(name)
            continue
        down(name)
        done.append(name)
    return done, skipped


def status(lab: str = DEFAULT_LAB) -> list[NodeStatus]:
    """The lab's nodes with their IP and whether their nspawn is running."""
    path = lab_dir(lab)
    result = []
    for record in read_records(path):
        pid = NodePaths.of(path, record.name).pid()
        running = pid is not None and processes.is_nspawn(pid, record.name)
        result.append(NodeStatus(record.name, record.ip, running, pid if running else None,
                                 record.region))
    return result


def lab_nodes(lab: str = DEFAULT_LAB) -> list[NodeRecord]:
    """What ``up`` created for each node of ``lab`` (name, IP, namespace, region)."""
    return read_records(lab_dir(lab))


def partition(lab: str, region: str, heal: bool = False) -> list[str]:
    """Cut region ``region`` of ``lab`` off (its nodes' links down), or ``heal`` it; returns
    the region's nodes."""
    require_root()
    records = read_records(lab_dir(lab))
    known = list(dict.fromkeys(r.region for r in records if r.region))
    regions.check_region(region, known, lab)
    members = [r for r in records if r.region == region]
    regions.set_links([r.netns for r in members], up=heal)
    return [r.name for r in members]


def ssh_config(lab: str = DEFAULT_LAB) -> Path:
    """The lab's ssh_config; :class:`LabError` when the lab is not up."""
    path = lab_dir(lab) / SSH_CONFIG
    if not read_records(lab_dir(lab)) or not path.exists():
        raise LabError(f"lab {lab!r} is not up (no nodes in {lab_dir(lab)})",
                       hint=f"Start it with `fleet lab up --lab {lab}`.")
    return path


def registry_path(lab: str = DEFAULT_LAB) -> Path:
    """Where ``up`` writes the lab registry."""
    return lab_dir(lab) / REGISTRY_FILE
