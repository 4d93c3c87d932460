"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab_fixtures import lab_refresh, lab_registry, session_lab_name  # noqa: F401
from tests.leaks import track_connections

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Unclosed SQLite connections fail the tests on every Python (:mod:`tests.leaks`)."""
    track_connections()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Lab tests share one session lab: under pytest-xdist they all run on one worker."""
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.xdist_group("lab"))


@pytest.fixture
def repo() -> Path:
    """The checkout's root folder."""
    return REPO
