"""Check that this machine can run a lab: root, and the host tools with their packages."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from fleet.core.errors import LabError

# tool -> Debian package that provides it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "zstd": "zstd",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "setsid": "util-linux",
    "mount": "mount",
}


def require_root(euid: int | None = None) -> None:
    """Raise :class:`LabError` unless running as root."""
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        raise LabError(
            f"fleet lab must run as root (running as uid {uid}): it creates network "
            "namespaces, a bridge, overlay mounts and systemd-nspawn containers",
            hint="Run it as root, e.g. `sudo fleet lab up`.",
        )


def check_prerequisites(euid: int | None = None,
                        which: Callable[[str], str | None] = shutil.which,
                        tools: tuple[str, ...] = tuple(TOOLS)) -> None:
    """Raise :class:`LabError` for the first missing requirement, naming the package."""
    require_root(euid)
    for tool in tools:
        if which(tool) is None:
            package = TOOLS[tool]
            raise LabError(f"{tool} not found on PATH: the lab needs it",
                           hint=f"apt-get install {package}")


# sysctl -> minimum value; every node's systemd, journald, logind and dbus hold inotify
# instances, and the default 128 runs out around 20 nodes (path units then fail).
HOST_LIMITS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
}
PROC_SYS = Path("/proc/sys")


def raise_host_limits(proc_sys: Path = PROC_SYS) -> dict[str, int]:
    """Raise kernel limits that many nodes need (never lowers); return what was changed."""
    changed = {}
    for key, minimum in HOST_LIMITS.items():
        path = proc_sys / key
        try:
            current = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if current < minimum:
            try:
                path.write_text(f"{minimum}\n")
            except OSError as exc:
                raise LabError(f"cannot raise {key.replace('/', '.')} from {current} to "
                               f"{minimum}: {exc}",
                               hint=f"Run `sysctl -w {key.replace('/', '.')}={minimum}`.",
                               ) from None
            changed[key.replace("/", ".")] = minimum
    return changed
