"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab_fixtures import lab_refresh, lab_registry, session_lab_name  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    """The checkout's root folder."""
    return REPO
