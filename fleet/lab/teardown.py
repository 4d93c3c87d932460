"""``down``: stop every node and remove namespaces, mounts, cgroups and the bridge.

Idempotent and tolerant of half-built state: everything is found from the lab index, the
node folders and the lab's cgroups, not only from what ``up`` managed to record.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

from fleet.core.errors import LabError
from fleet.lab import delayline, model, processes
from fleet.lab.commands import mounts_under, unmount_all
from fleet.lab.network import (
    INDEX_FILE,
    LAST_INDEX_FILE,
    lab_links,
    lab_netns,
    netns_prefix,
    read_index,
    remove_network,
)
from fleet.lab.node import NODES_DIR, NodePaths
from fleet.lab.paths import cgroup_dirs, ssh_control_dir
from fleet.lab.registry_writer import SSH_CONFIG
from fleet.lab.state import STATE_FILE, read_records

STOP_TIMEOUT = 15.0
RESIGNAL_EVERY = 2.0


def node_names(lab: str, lab_path: Path) -> set[str]:
    """Nodes known from the records, the node folders or the lab's cgroups."""
    names = {record.name for record in read_records(lab_path)}
    if (lab_path / NODES_DIR).is_dir():
        names.update(p.name for p in (lab_path / NODES_DIR).iterdir() if p.is_dir())
    for cgroup in cgroup_dirs(lab):
        if cgroup.is_dir():
            names.update(p.name for p in cgroup.iterdir() if p.is_dir())
    return names


def close_ssh_masters(lab_path: Path) -> None:
    """Ask every shared SSH connection of the lab to exit."""
    config = lab_path / SSH_CONFIG
    if not config.exists():
        return
    for record in read_records(lab_path):
        subprocess.run(["ssh", "-F", str(config), "-O", "exit", record.name],
                       capture_output=True, check=False, timeout=10)


def stop_nodes(lab: str, lab_path: Path, names: set[str], grace: float = STOP_TIMEOUT) -> None:
    """SIGTERM each nspawn (repeated, as a node still booting may miss it), wait up to
    ``grace`` s for a clean poweroff, then kill and remove each node's cgroups."""
    pids = {}
    for name in names:
        pid = NodePaths.of(lab_path, name).pid()
        if pid is not None and processes.is_nspawn(pid, name):
            pids[name] = pid
    deadline = time.monotonic() + grace
    left = set(pids.values())
    while left and time.monotonic() < deadline:
        for pid in left:
            processes.signal_pid(pid, signal.SIGTERM)
        left = processes.wait_gone(left, min(RESIGNAL_EVERY, deadline - time.monotonic()))
    for pid in left:
        processes.signal_pid(pid, signal.SIGKILL)
    processes.wait_gone(left, 5)
    for name in names:
        dirs = cgroup_dirs(lab, name)
        for cgroup in dirs:
            processes.kill_cgroup(cgroup)
        for cgroup in dirs:
            processes.remove_cgroup(cgroup)
    for cgroup in cgroup_dirs(lab):
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def leftovers(lab: str, lab_path: Path, index: int | None, names: set[str]) -> list[str]:
    """What is still there after ``down`` (empty when clean)."""
    found = [f"mount {point}" for point in mounts_under(lab_path)]
    if index is not None:
        found += [f"network namespace {ns}" for ns in lab_netns(index)]
        found += [f"interface {link}" for link in lab_links(index)]
        found += [f"delay line pid {pid}" for pid in delayline.running(netns_prefix(index))]
    for name in names:
        pid = NodePaths.of(lab_path, name).pid()
        if pid is not None and processes.is_nspawn(pid, name):
            found.append(f"systemd-nspawn pid {pid} ({name})")
        for cgroup in cgroup_dirs(lab, name):
            found += [f"pid {pid} in {cgroup}" for pid in processes.cgroup_pids(cgroup)]
    found += [f"cgroup {cgroup}" for cgroup in cgroup_dirs(lab) if cgroup.exists()]
    return found


def teardown(lab: str, lab_path: Path, grace: float = STOP_TIMEOUT) -> None:
    """Remove everything the lab created at run time; keep its keys and files.

    Nodes get ``grace`` seconds to power off cleanly before they are killed.
    """
    index = read_index(lab_path)
    names = node_names(lab, lab_path)
    model.stop(lab_path)
    close_ssh_masters(lab_path)
    stop_nodes(lab, lab_path, names, grace)
    unmount_all(lab_path)
    if index is not None:
        shutil.rmtree(ssh_control_dir(index), ignore_errors=True)
        delayline.stop(netns_prefix(index))
        remove_network(index)
    left = leftovers(lab, lab_path, index, names)
    if left:
        raise LabError(f"lab {lab!r} is not fully down; still present: {', '.join(left)}",
                       hint=f"Run `fleet lab down --lab {lab}` again; if it persists, remove "
                            "them by hand.")
    shutil.rmtree(lab_path / NODES_DIR, ignore_errors=True)
    if index is not None:  # the next `up` takes it again when it is free: the same addresses
        (lab_path / LAST_INDEX_FILE).write_text(f"{index}\n")
    for name in (STATE_FILE, INDEX_FILE, model.NAME_FILE):
        (lab_path / name).unlink(missing_ok=True)
    # compatibility: until 0.3.0: labs' SSH sockets in the lab folder
    for socket in lab_path.glob("cm-*"):
        socket.unlink(missing_ok=True)
