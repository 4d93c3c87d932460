"""`fleet lab down --all` takes down every lab but the ones a session holds (own lab root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab import paths
from tests.lab_fixtures import EXAMPLE_REGISTRY, skip_unless_root

pytestmark = pytest.mark.lab


@pytest.fixture
def own_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, short FLEET_LAB_ROOT so --all sees only this test's labs."""
    skip_unless_root()
    root = Path(tempfile.mkdtemp(prefix="fl", dir="/tmp"))
    monkeypatch.setenv(paths.LAB_ROOT_ENV, str(root))
    try:
        yield root
    finally:
        for name in lab.labs():
            lab.down(name)
        shutil.rmtree(root)


def test_down_all_skips_claimed_labs_unless_forced(own_root: Path) -> None:
    free, held = f"free-{os.getpid()}", f"held-{os.getpid()}"
    registry = load_registry(EXAMPLE_REGISTRY)
    for name in (free, held):
        lab.up(registry, nodes=1, lab=name)
    claim = lab.claim(held)
    assert claim is not None
    try:
        done = subprocess.run(["fleet", "lab", "down", "--all"], capture_output=True,
                              text=True, timeout=120, check=True)
        assert done.stdout == (f"Labs down: {free}.\nSkipped labs in use by a running "
                               f"session: {held} (use --force to take them down too).\n")
        assert lab.status(free) == []
        assert [s.running for s in lab.status(held)] == [True]
        forced = subprocess.run(["fleet", "lab", "down", "--all", "--force"],
                                capture_output=True, text=True, timeout=120, check=True)
        assert forced.stdout == f"Labs down: {held}.\n"
        assert lab.status(held) == []
    finally:
        claim.release()
    again = subprocess.run(["fleet", "lab", "down", "--all"], capture_output=True, text=True,
                           timeout=60, check=True)
    assert again.stdout == "No lab was up.\n"
