"""Each test's `fleet secrets` runs edit and sweep in a memory directory of its own: a sweep
in one test never removes what a test beside it killed on purpose."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh 0700 ``$XDG_RUNTIME_DIR`` on /dev/shm (a tmpfs), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="fleet-test-runtime-", dir="/dev/shm"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
