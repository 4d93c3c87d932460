"""``fleet test`` on a deployed lab: the live suite passes on every agent, and fails naming
the host and the check when one agent's unit is stopped."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import Fleet

pytestmark = [pytest.mark.lab, pytest.mark.slow]
WORKER = "bezalel"


def test_fleet_test_passes_then_names_a_stopped_unit(fleet: Fleet) -> None:
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    passed = fleet.run("test")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    rows = [line.split() for line in passed.stdout.splitlines() if line.startswith("    ")]
    assert {row[0]: row[1] for row in rows} == {
        "ezra-primary": "ok", "bezalel": "ok", "allegro": "ok"}
    assert all(int(row[2]) >= 10 and row[4:6] == ["0", "failed"] for row in rows)

    fleet.ssh(WORKER, f"systemctl stop fleet-agent-{WORKER}.service")
    try:
        failed = fleet.run("test", "--limit", "worker")
    finally:
        fleet.ssh(WORKER, f"systemctl start fleet-agent-{WORKER}.service")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"Error: {WORKER}: test_service_running_and_enabled" in failed.stderr
    assert f"Error: {WORKER}: test_health_is_ok_from_the_node" in failed.stderr
    assert "allegro" in failed.stdout and "Error: allegro" not in failed.stderr
