"""Wake the dispatcher: a FIFO ``<state dir>/dispatch.wake`` that web workers write a byte to.

The dispatcher opens it read-write (so it never sees end-of-file) and waits on it with a
timeout; a web worker opens it write-only and non-blocking, which fails with ``ENXIO`` when no
dispatcher has it open: :func:`notify` then answers ``False`` and the worker starts one. A full
pipe means the dispatcher has wake-ups pending already, which is as good as a write.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from pathlib import Path
from types import TracebackType

FIFO_NAME = "dispatch.wake"


def fifo_path(state_dir: Path) -> Path:
    """The wake-up FIFO of the receiver whose state dir is ``state_dir``."""
    return state_dir / FIFO_NAME


def notify(state_dir: Path) -> bool:
    """Wake the dispatcher; ``False`` when none is listening."""
    try:
        fd = os.open(fifo_path(state_dir), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, b"\n")
    except BlockingIOError:
        pass  # full: wake-ups are pending already
    finally:
        os.close(fd)
    return True


class Listener:
    """The dispatcher's end of the FIFO; use as a context manager."""

    def __init__(self, state_dir: Path) -> None:
        self.path = fifo_path(state_dir)
        self.fd: int | None = None

    def __enter__(self) -> Listener:
        try:
            mode = os.lstat(self.path).st_mode
            if not stat.S_ISFIFO(mode):
                self.path.unlink()
                os.mkfifo(self.path, 0o600)
        except FileNotFoundError:
            os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        return self

    def wait(self, timeout: float) -> bool:
        """Block until woken or ``timeout`` seconds passed; True when woken. Reads every
        pending wake-up, so a burst of pushes costs one wake-up."""
        assert self.fd is not None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
