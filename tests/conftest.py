"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab_fixtures import lab_refresh, lab_registry, session_lab_name  # noqa: F401
from tests.leaks import track_connections

REPO = Path(__file__).resolve().parent.parent
SESSION_LAB = "lab_registry"
"""The fixture of the session's shared lab."""


def pytest_configure(config: pytest.Config) -> None:
    """Unclosed SQLite connections fail the tests on every Python (:mod:`tests.leaks`)."""
    track_connections()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) each lab test module runs whole on one worker,
    in file order, in one of two groups: the modules that use the session lab (``lab_registry``)
    share it, so they all run on one worker; the modules that boot only labs of their own
    (other lab names: :func:`tests.lab_fixtures.claim_test_lab`) run on another meanwhile, and
    one that asks for ``lab_registry`` only at run time (``tests/live``) gets that worker's own
    session lab. A module that names its own group keeps it (the stock Debian runs, whose
    labs are their own, run in turn with the session lab's modules: two heavy groups at once is
    what 2 cores take). Slow tests that need no lab go to any worker."""
    lab_items = [item for item in items if item.get_closest_marker("lab")]
    shared = {item.path for item in lab_items
              if SESSION_LAB in getattr(item, "fixturenames", ())}  # a pytest.Function's
    for item in lab_items:
        if item.get_closest_marker("xdist_group") is None:  # a module may name its own
            item.add_marker(pytest.mark.xdist_group("lab" if item.path in shared
                                                    else "own-labs"))


@pytest.fixture
def repo() -> Path:
    """The checkout's root folder."""
    return REPO
