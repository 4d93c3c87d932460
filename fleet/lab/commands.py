"""Run host commands, turning failures into :class:`LabError` that shows stderr."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from fleet.errors import LabError


def run(args: Sequence[str], *, check: bool = True, timeout: float = 120,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``args``; with ``check`` raise :class:`LabError` naming the command on failure."""
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                                input=input, check=False)
    except FileNotFoundError:
        raise LabError(f"command not found: {args[0]}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{shlex.join(args)}` did not finish within {timeout:.0f} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise LabError(f"`{shlex.join(args)}` failed (exit {result.returncode}): "
                       + " | ".join(detail))
    return result
