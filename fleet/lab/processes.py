"""Process and cgroup helpers: liveness by pid, waiting on given pids, killing a cgroup."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from fleet.core import liveness


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a running (not zombie) process, the one that started at ``started``
    if given (:func:`fleet.core.liveness.alive`); reaps it if it is our child."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return liveness.alive(pid, started)


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of every process whose command line can be read now."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(proc.name), args


def is_nspawn(pid: int, machine: str) -> bool:
    """Whether ``pid`` is the systemd-nspawn running ``machine`` (guards against pid reuse)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(args) and args[0].endswith(b"systemd-nspawn") and machine.encode() in args


def signal_pid(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` s for these pids to exit; return those still alive."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if alive(pid)}
        if left:
            time.sleep(0.05)
    return {pid for pid in left if alive(pid)}


def cgroup_pids(cgroup: Path) -> set[int]:
    """Every pid in ``cgroup`` and its sub-cgroups."""
    pids: set[int] = set()
    if not cgroup.is_dir():
        return pids
    for folder, _, _ in os.walk(cgroup):
        with contextlib.suppress(FileNotFoundError, OSError):
            text = (Path(folder) / "cgroup.procs").read_text()
            pids.update(int(p) for p in text.split())
    return {pid for pid in pids if alive(pid)}


def kill_cgroup(cgroup: Path, timeout: float = 5.0) -> set[int]:
    """SIGKILL everything in ``cgroup`` (``cgroup.kill`` if present); return survivors."""
    if not cgroup.is_dir():
        return set()
    kill_file = cgroup / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
    for pid in cgroup_pids(cgroup):
        signal_pid(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cgroup_pids(cgroup):
            return set()
        time.sleep(0.05)
    return cgroup_pids(cgroup)


def remove_cgroup(cgroup: Path, timeout: float = 3.0) -> bool:
    """rmdir ``cgroup`` bottom-up, retrying while it is still busy; True when it is gone."""
    deadline = time.monotonic() + timeout
    while cgroup.is_dir():
        for folder, _, _ in os.walk(cgroup, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        if not cgroup.exists() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return not cgroup.exists()
