"""Fixtures for the lab tests: a second, throw-away lab beside the session's lab."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet import lab
from tests.lab_fixtures import skip_unless_root


@pytest.fixture
def spare_lab(session_lab_name: str) -> Iterator[str]:
    """A claimed lab name other than the session's, taken down after the test."""
    skip_unless_root()
    claimed = lab.claim(f"{session_lab_name}-spare")
    if claimed is None:
        pytest.fail(f"lab {session_lab_name}-spare is held by another session")
    try:
        lab.down(claimed.lab)
        yield claimed.lab
    finally:
        try:
            lab.down(claimed.lab)
        finally:
            claimed.release()
