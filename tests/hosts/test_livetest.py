"""``fleet test`` runs the live suite whatever pytest options the fleet repository sets."""

from __future__ import annotations

from pathlib import Path

from fleet.control import livetest
from fleet.core.registry import load_registry
from tests.hosts.test_hosts import registry_file

PROJECT_CONFIG = """[tool.pytest.ini_options]
addopts = "-m 'not lab and not slow' -n 4"
markers = ["lab: real nodes", "slow: slow"]
"""

LIVE_SUITE = """import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_reaches_the_agent() -> None:
    assert True


def test_sees_a_failure() -> None:
    assert 1 == 2, "the unit is stopped"
"""


def test_the_projects_default_marker_filter_does_not_deselect_the_live_suite(
        tmp_path: Path) -> None:
    registry = load_registry(registry_file(tmp_path, "known_hosts"))
    project = tmp_path / "fleet-repo"
    (project / "tests" / "live").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PROJECT_CONFIG)
    (project / "tests" / "live" / "test_nodes.py").write_text(LIVE_SUITE)
    reports = tmp_path / "reports"
    reports.mkdir()
    result = livetest.run_host("beta", registry, project / livetest.SUITE, reports)
    assert (result.passed, [name for name, _ in result.failed]) == (1, ["test_sees_a_failure"])
