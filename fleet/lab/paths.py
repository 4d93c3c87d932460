"""Where labs and the shared rootfs cache live on the controller."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bus.locks import FileLock
from fleet.core.errors import LabError

LAB_ROOT_ENV = "FLEET_LAB_ROOT"
CACHE_DIR_ENV = "FLEET_CACHE_DIR"
LAB_ENV = "FLEET_LAB"
DEFAULT_LAB_ROOT = "/var/lib/sovereign-fleet/labs"
DEFAULT_CACHE_DIR = "/var/cache/sovereign-fleet"
DEFAULT_LAB = "default"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_HIERARCHIES = ("systemd", "unified")
CGROUP_PARENT = "sovereign-fleet"
RUNTIME_ROOT = Path("/run/sovereign-fleet")
LAB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")  # matched in full


def check_lab_name(lab: str) -> str:
    """Return ``lab`` if it is a valid lab name, else raise :class:`LabError`."""
    if not LAB_NAME_RE.fullmatch(lab):
        raise LabError(
            f"lab name {lab!r} is invalid: use 1-31 lowercase letters, digits and '-', "
            "starting with a letter or digit",
            hint="Pass --lab NAME (or set FLEET_LAB) with a name like 'default' or 'pytest'.",
        )
    return lab


def lab_lock(path: Path) -> FileLock:
    """A lock of the lab's (an operation, a cache, a claim) on ``path``: its file is readable
    by everyone (0644), so a probe (``fleet lab status``) needs no root."""
    return FileLock(path, mode=0o644)


def lab_root() -> Path:
    """The folder holding one subfolder per lab (``$FLEET_LAB_ROOT``)."""
    return Path(os.environ.get(LAB_ROOT_ENV) or DEFAULT_LAB_ROOT)


def lab_dir(lab: str = DEFAULT_LAB) -> Path:
    """The folder of one lab: keys, registry, ssh_config and node overlays."""
    return lab_root() / check_lab_name(lab)


def ssh_control_dir(index: int) -> Path:
    """The folder of lab ``index``'s shared SSH master sockets (``ControlPath``).

    Short and fixed, unlike the lab folder: a socket path must fit in 108 bytes, and ssh
    adds a 40-character hash and a 17-character suffix while it creates one. Labs that run
    at the same time have different indexes, so they never share it.
    """
    return RUNTIME_ROOT / f"ssh-{index}"


def cache_dir() -> Path:
    """The rootfs cache shared by every lab (``$FLEET_CACHE_DIR``)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def cgroup_hierarchies() -> list[Path]:
    """Cgroup trees a node joins: v1 ``name=systemd`` plus unified, or the pure v2 root.

    The last one is the unified (v2) tree, which has ``cgroup.kill``.
    """
    if (CGROUP_ROOT / "unified").is_dir():
        return [CGROUP_ROOT / hierarchy for hierarchy in CGROUP_HIERARCHIES]
    return [CGROUP_ROOT]


def cgroup_dirs(lab: str, node: str | None = None) -> list[Path]:
    """The lab's (or one node's) cgroup folders, unified tree last."""
    parts = [CGROUP_PARENT, lab] + ([node] if node else [])
    return [hierarchy.joinpath(*parts) for hierarchy in cgroup_hierarchies()]
