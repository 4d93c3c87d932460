"""Reading a file a person named: only a regular file, of a bounded size, checked on the file
as opened (no race between a check and the read), and never blocking on a FIFO or device.
Standard library only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fleet.core.errors import FleetError


def read_regular(path: Path, what: str, limit: int, hint: str | None = None,
                 private: bool = False, error: type[FleetError] = FleetError) -> bytes:
    """The bytes of ``path``, a regular file (``what`` names it in errors) of at most
    ``limit`` bytes, and with ``private`` not readable by group or others: a FIFO, folder or
    device is refused without blocking on it, all checked on the file as opened; ``error``
    is raised naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found", hint=hint) from None
    except OSError as exc:
        raise error(f"{path}: cannot open the {what} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        mode, size = info.st_mode, info.st_size
        if not stat.S_ISREG(mode):
            raise error(f"{path}: the {what} is not a regular file (a folder, FIFO or "
                        "device)", hint="Name a regular file.")
        if private and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(f"{path}: {what} is readable by group or others "
                        f"(mode {stat.S_IMODE(mode):04o})", hint=f"Run: chmod 600 {path}")
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise error(f"{path}: over {limit} bytes: not a {what}")
    return data
