"""Run a command under a pseudo-terminal (util-linux ``script``) and read what a person would
see: the captured stream rendered by a terminal emulator (``pyte``) into the final screen."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyte

COLUMNS, LINES = 160, 60


def run_on_terminal(command: Sequence[str], env: Mapping[str, str], cwd: Path,
                    typescript: Path, timeout: float = 600) -> int:
    """Run ``command`` on a pseudo-terminal of ``COLUMNS`` x ``LINES`` (told to it through
    ``$COLUMNS``, ``$LINES``, ``$TERM``); its output is kept in ``typescript``. Its exit code."""
    done = subprocess.run(["script", "-q", "-f", "-e", "-c", shlex.join(command),
                           str(typescript)],
                          env={**env, "TERM": "xterm", "COLUMNS": str(COLUMNS),
                               "LINES": str(LINES)},
                          cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          timeout=timeout, check=False)
    return done.returncode


def final_screen(typescript: Path) -> list[str]:
    """The screen's lines (right-stripped, blank ones dropped) once the whole captured stream
    was drawn."""
    raw = typescript.read_bytes()
    if raw.startswith(b"Script started"):  # script's own first and last lines
        raw = raw.split(b"\n", 1)[1].rsplit(b"Script done", 1)[0]
    screen = pyte.Screen(COLUMNS, LINES)
    pyte.ByteStream(screen).feed(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return [line.rstrip() for line in screen.display if line.strip()]
