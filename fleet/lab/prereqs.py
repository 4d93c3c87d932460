"""Check that this machine can run a lab: root, and the host tools with their packages."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from fleet.errors import LabError

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
