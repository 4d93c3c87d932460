"""The run log as the read API serves it: the deploy's output with secrets masked line by line
while the deploy still runs.

The runner, git and the deploy command write to ``run-<id>.log.unmasked`` (mode 0600, in the
0700 state dir): a file, not a pipe, so a deploy orphaned by a killed receiver keeps writing.
A thread copies each complete line of it into ``run-<id>.log`` through the masker, so a secret
split across two writes is masked once its line is whole. The unmasked file is removed when
the run ends; one left behind by a killed dispatcher is masked into the log and removed by the
next dispatcher (:func:`salvage`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

from fleet.core.atomic import write_atomic
from fleet.core.masking import Masker

COPY_INTERVAL_S = 0.2
MAX_LINE_BYTES = 64 * 1024  # a longer line without a newline is copied in pieces


def unmasked_path(log_path: Path) -> Path:
    """Where the raw output of the run logged at ``log_path`` is written."""
    return log_path.with_name(f"{log_path.name}.unmasked")


def salvage(raw: Path, masker: Masker) -> Path:
    """Rewrite the run log of the unmasked file ``raw`` from all of it, masked, and remove
    ``raw`` (its run's dispatcher died before it could); returns the log's path."""
    log = raw.with_name(raw.name.removesuffix(".unmasked"))
    text = raw.read_bytes().decode("utf-8", errors="surrogateescape")
    write_atomic(log, masker(text).encode("utf-8", errors="surrogateescape"), mode=0o600)
    raw.unlink()
    return log


class MaskedLog:
    """Copy complete lines of ``raw`` into ``log`` with ``masker`` applied, every
    ``COPY_INTERVAL_S`` in a thread while used as a context manager, and on :meth:`copy`."""

    def __init__(self, raw: Path, log: Path, masker: Masker) -> None:
        self.raw, self.log, self.masker = raw, log, masker
        self.offset = 0
        self.pending = b""
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def copy(self, final: bool = False) -> None:
        """Copy what was written since the last call; ``final`` also copies a last line that
        has no newline."""
        with self.lock:
            try:
                with self.raw.open("rb") as handle:
                    handle.seek(self.offset)
                    data = handle.read()
            except FileNotFoundError:
                return
            self.offset += len(data)
            data = self.pending + data
            cut = len(data) if final else data.rfind(b"\n") + 1
            if not cut and len(data) > MAX_LINE_BYTES:
                cut = len(data)
            self.pending = data[cut:]
            if cut:
                text = data[:cut].decode("utf-8", errors="surrogateescape")
                with self.log.open("ab") as out:
                    out.write(self.masker(text).encode("utf-8", errors="surrogateescape"))

    def mask_with(self, masker: Masker) -> None:
        """Mask what is copied from now on with ``masker`` (one that knows more secrets: those
        of the checkout, once the run has one)."""
        with self.lock:
            self.masker = masker

    def __enter__(self) -> MaskedLog:
        fd = os.open(self.raw, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        self.thread = threading.Thread(target=self._loop, name="fleet-run-log", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.copy(final=True)
        self.raw.unlink(missing_ok=True)

    def _loop(self) -> None:
        """Copy until told to stop."""
        while not self.stop.wait(COPY_INTERVAL_S):
            self.copy()
