"""Shared lab fixtures: a session-wide lab fleet built from the example registry.

``lab_registry`` brings up the lab named by ``$FLEET_TEST_LAB`` (default ``pytest``) from the
repo's ``registry.yaml`` (3 agents), yields the lab registry path and takes the lab down at
session end, also after failures. Without root it skips; with root a lab failure fails.
``fresh_lab`` re-creates the nodes from scratch (down + up) for tests that need cold nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.registry import load_registry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_REGISTRY = REPO / "registry.yaml"
TEST_LAB_ENV = "FLEET_TEST_LAB"


def test_lab_name() -> str:
    """The lab the test session uses (``$FLEET_TEST_LAB``, default ``pytest``)."""
    return os.environ.get(TEST_LAB_ENV) or "pytest"


test_lab_name.__test__ = False  # type: ignore[attr-defined]


def skip_unless_root() -> None:
    """Skip the calling test when not running as root (the lab needs root)."""
    if os.geteuid() != 0:
        pytest.skip(f"the nspawn lab needs root (running as uid {os.geteuid()})")


def fresh_lab(nodes: int | None = None, name: str | None = None,
              registry: Path = EXAMPLE_REGISTRY) -> Path:
    """Take the lab down and bring it up again with cold nodes; return the lab registry."""
    skip_unless_root()
    lab_name = name or test_lab_name()
    lab.down(lab_name)
    return lab.up(load_registry(registry), nodes=nodes, lab=lab_name)


@pytest.fixture(scope="session")
def lab_registry() -> Iterator[Path]:
    """The session's lab registry path (3 running nodes); the lab is taken down at the end."""
    skip_unless_root()
    name = test_lab_name()
    lab.down(name)  # a previous session may have been killed mid-way
    try:
        yield lab.up(load_registry(EXAMPLE_REGISTRY), lab=name)
    finally:
        lab.down(name)


@pytest.fixture
def lab_refresh(lab_registry: Path) -> Callable[[], Path]:
    """A function that re-creates the session lab's nodes from scratch (cold nodes)."""
    return lambda: fresh_lab()
