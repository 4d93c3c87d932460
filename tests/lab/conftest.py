"""Fixtures for the lab tests: throw-away labs beside the session's lab."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from fleet import lab
from tests.lab_fixtures import skip_unless_root


@pytest.fixture
def claim_spare(session_lab_name: str) -> Iterator[Callable[[str], str]]:
    """A function claiming lab ``<session lab>-<suffix>``; each is taken down after the test."""
    skip_unless_root()
    claims: list[lab.LabClaim] = []

    def claim(suffix: str) -> str:
        claimed = lab.claim(f"{session_lab_name}-{suffix}")
        if claimed is None:
            pytest.fail(f"lab {session_lab_name}-{suffix} is held by another session")
        claims.append(claimed)
        lab.down(claimed.lab)
        return claimed.lab

    try:
        yield claim
    finally:
        for claimed in claims:
            try:
                lab.down(claimed.lab)
            finally:
                claimed.release()


@pytest.fixture
def spare_lab(claim_spare: Callable[[str], str]) -> str:
    """A claimed lab name other than the session's, taken down after the test."""
    return claim_spare("spare")
