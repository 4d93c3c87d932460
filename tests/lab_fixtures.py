"""Shared lab fixtures: a session-wide lab fleet built from the example registry.

``lab_registry`` brings up the lab named by ``$FLEET_TEST_LAB`` (default ``pytest``) from the
repo's ``registry.yaml`` (3 agents), yields the lab registry path and takes the lab down at
session end, also after failures. Without root it skips; with root a lab failure fails.

The session claims its lab (an ``flock`` that dies with the process): when another session
already holds ``pytest``, this one uses ``pytest-2``, ``pytest-3``, ... instead, and
``fleet lab down --all`` leaves claimed labs alone. ``session_lab_name`` says which lab was taken.
``fresh_lab`` / ``lab_refresh`` re-create the nodes from scratch for tests that need cold
nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.core.registry import load_registry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_REGISTRY = REPO / "registry.yaml"
TEST_LAB_ENV = "FLEET_TEST_LAB"
MAX_PARALLEL_SESSIONS = 9


def skip_unless_root() -> None:
    """Skip the calling test when not running as root (the lab needs root)."""
    if os.geteuid() != 0:
        pytest.skip(f"the nspawn lab needs root (running as uid {os.geteuid()})")


def claim_lab(base: str) -> lab.LabClaim:
    """Claim ``base``, or ``base-2``, ``base-3``, ... when other sessions hold it."""
    names = [base] + [f"{base}-{n}" for n in range(2, MAX_PARALLEL_SESSIONS + 1)]
    for name in names:
        claimed = lab.claim(name)
        if claimed is not None:
            return claimed
    pytest.fail(f"labs {names[0]} to {names[-1]} are all held by other test sessions; "
                f"set {TEST_LAB_ENV} to another name")


def lab_base() -> str:
    """The prefix of every lab this session boots: ``$FLEET_TEST_LAB``, default ``pytest``.

    Lab names reach host-wide places (cgroups under ``sovereign-fleet/``), so a session that
    runs beside another on the same kernel (the stock Debian test) sets its own prefix.
    """
    return os.environ.get(TEST_LAB_ENV) or "pytest"


def claim_test_lab(suffix: str) -> lab.LabClaim:
    """Claim the lab ``<lab_base()>-<suffix>`` (or ``...-2``, ... when others hold it)."""
    return claim_lab(f"{lab_base()}-{suffix}")


def fresh_lab(name: str, nodes: int | None = None,
              registry: Path = EXAMPLE_REGISTRY) -> Path:
    """Take lab ``name`` down and bring it up again with cold nodes; return its registry."""
    skip_unless_root()
    lab.down(name)
    return lab.up(load_registry(registry), nodes=nodes, lab=name)


@pytest.fixture(scope="session")
def session_lab_name() -> Iterator[str]:
    """Name of the lab this session holds (``$FLEET_TEST_LAB``, default ``pytest``)."""
    skip_unless_root()
    claimed = claim_lab(lab_base())
    try:
        yield claimed.lab
    finally:
        claimed.release()


@pytest.fixture(scope="session")
def lab_registry(session_lab_name: str) -> Iterator[Path]:
    """The session's lab registry path (3 running nodes); the lab is taken down at the end."""
    try:
        yield fresh_lab(session_lab_name)  # down first: a killed session may have left it half-up
    finally:
        lab.down(session_lab_name)


@pytest.fixture
def lab_refresh(session_lab_name: str, lab_registry: Path) -> Callable[[], Path]:
    """A function that re-creates the session lab's nodes from scratch (cold nodes)."""
    return lambda: fresh_lab(session_lab_name)
