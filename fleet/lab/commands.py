"""Run host commands, turning failures into :class:`LabError` that shows stderr.

A long command (debootstrap, tar of a rootfs) runs in a process group of its own and takes a
``cancel`` event: when ``fleet lab up`` is told to stop (SIGTERM, Ctrl-C), the whole group is
stopped (TERM, then KILL) and :class:`Cancelled` raised, so nothing it started outlives the
lab's clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fleet.core.errors import LabError

CANCEL_POLL_S = 0.2  # how soon a cancel is noticed while a command runs
STOP_GRACE_S = 5.0  # from TERM to KILL for a cancelled command's process group


class Cancelled(LabError):
    """``up`` was asked to stop (SIGTERM/SIGINT in the CLI) or a sibling node failed."""


def run(args: Sequence[str], *, check: bool = True, timeout: float = 120,
        input: str | None = None, cancel: threading.Event | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run ``args``; with ``check`` raise :class:`LabError` naming the command on failure.

    With ``cancel``, the command runs in a new process group, which is stopped as a whole
    (and :class:`Cancelled` raised) once ``cancel`` is set or the timeout passes.
    """
    if cancel is not None:
        return _run_cancellable(list(args), check, timeout, input, cancel)
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                                input=input, check=False)
    except FileNotFoundError:
        raise LabError(f"command not found: {args[0]}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{shlex.join(args)}` did not finish within {timeout:.0f} s") from None
    return _checked(list(args), result, check)


def _run_cancellable(args: list[str], check: bool, timeout: float, input: str | None,
                     cancel: threading.Event) -> subprocess.CompletedProcess[str]:
    """:func:`run` in a process group of its own, stopped as a whole on cancel or timeout."""
    try:
        process = subprocess.Popen(args, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
    except FileNotFoundError:
        raise LabError(f"command not found: {args[0]}") from None
    deadline = time.monotonic() + timeout
    pending = input
    try:
        while True:
            try:
                out, err = process.communicate(pending, timeout=CANCEL_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pending = None  # communicate() sent it already
            if cancel.is_set():
                raise Cancelled(f"`{args[0]}` was stopped: the lab start was cancelled")
            if time.monotonic() > deadline:
                raise LabError(f"`{shlex.join(args)}` did not finish within {timeout:.0f} s")
    except BaseException:
        stop_group(process)
        raise
    return _checked(args, subprocess.CompletedProcess(args, process.returncode, out, err), check)


def stop_group(process: subprocess.Popen[str], grace: float = STOP_GRACE_S) -> None:
    """Stop ``process`` and everything in its process group: TERM, then KILL after ``grace``
    seconds; what the leader left behind in the group is killed too."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        try:
            process.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # children the leader did not take along


def _checked(args: list[str], result: subprocess.CompletedProcess[str],
             check: bool) -> subprocess.CompletedProcess[str]:
    """``result``, or :class:`LabError` with the tail of its output when it failed."""
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise LabError(f"`{shlex.join(args)}` failed (exit {result.returncode}): "
                       + " | ".join(detail))
    return result


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    """Unmount everything mounted below ``path`` (lazily if a mount is still busy)."""
    for point in mounts_under(path):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)
