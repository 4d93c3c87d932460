"""Release pre-staging on the nspawn lab (``fleet deploy --prestage``): the workers, a later
rollout stage, get the release uploaded and unpacked before their rollout gate opens; a cold
deploy with it ends as one without it; with a canary that fails verify, the workers keep the
unpacked release, unused: ``current``, the agent and the deploy lock as they were."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy.conftest import COLD_CHANGES, Fleet
from tests.lab_fixtures import fresh_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
WORKERS = ("bezalel", "allegro")
STAGED = ["Pre-stage | Release folders (owners and modes as baseline sets them)",
          "Pre-stage | Release unpacked"]


@pytest.fixture(scope="module")
def cold_prestaged(fleet: Fleet, session_lab_name: str) -> dict[str, object]:
    """The run record of a cold deploy with pre-staging on, to freshly booted nodes."""
    assert fresh_lab(session_lab_name) == fleet.registry
    done = fleet.run("deploy", "--prestage")
    assert done.returncode == 0, done.stdout + done.stderr
    return fleet.record(done.stdout)


def test_a_cold_deploy_with_prestaging_ends_as_one_without(
        fleet: Fleet, cold_prestaged: dict[str, object]) -> None:
    record = cold_prestaged
    hosts = record["hosts"]
    assert isinstance(hosts, dict)
    assert record["status"] == "ok"
    release = record["release"]
    assert {name: (entry["status"], entry["release"]) for name, entry in hosts.items()} == \
        {name: ("ok", release) for name in ("ezra-primary", *WORKERS)}
    # the workers got the release before their gate, the canary in its release phase
    for name in WORKERS:
        changed = hosts[name]["changed"]
        assert changed[:2] == STAGED, changed
        assert [op for op in changed if op not in STAGED] == \
            [op for op in COLD_CHANGES if op != "Release | Release unpacked"]
    assert "Release | Release unpacked" in hosts["ezra-primary"]["changed"]
    assert not [op for op in hosts["ezra-primary"]["changed"] if op.startswith("Pre-stage")]
    for name in WORKERS:  # baseline's owners and modes; no lock left
        assert fleet.ssh(name, "stat -c '%U:%G %a' /opt/fleet /opt/fleet/releases; "
                               "readlink /opt/fleet/current; ls -A /opt/fleet/releases; "
                               "test ! -e /run/fleet-deploy.lock && echo unlocked").split() == \
            ["root:root", "755", "root:root", "755", f"releases/{release}", release,
             "unlocked"]
    # the same fleet as a deploy without it leaves: nothing left to change
    again = fleet.run("deploy", "--no-prestage")
    assert again.returncode == 0, again.stdout + again.stderr
    second = fleet.record(again.stdout)
    assert (second["status"], second["release"]) == ("ok", release)
    assert {name: entry["changed"] for name, entry in second["hosts"].items()} == \
        {name: [] for name in ("ezra-primary", *WORKERS)}


@pytest.mark.usefixtures("cold_prestaged")
def test_a_failing_canary_leaves_the_workers_release_unpacked_and_unused(
        fleet: Fleet, unit_state: Callable[[], dict[str, str]]) -> None:
    def worker_state() -> dict[str, str]:
        return {name: fleet.ssh(name, "readlink /opt/fleet/current; sha256sum "
                                      f"/etc/fleet/{name}/config.json /etc/fleet/{name}/env")
                for name in WORKERS}

    before, units = worker_state(), unit_state()
    done = fleet.run("deploy", "--prestage", extra_env={"FLEET_BROKEN_RELEASE": "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    record = fleet.record(done.stdout)
    broken = record["release"]
    assert str(broken).endswith("-broken")
    assert record["hosts"]["ezra-primary"]["status"] == "rolled_back"
    assert record["skipped"] == list(WORKERS)
    for name in WORKERS:
        entry = record["hosts"][name]
        assert entry["status"] == "skipped", entry
        assert entry["reason"].startswith("not deployed"), entry
        # received and unpacked before the gate, which then stopped the worker: unused
        assert fleet.ssh(name, f"test -f /opt/fleet/releases/{broken}/site/fleet/__init__.py"
                               " && ls -A /opt/fleet/releases | grep -c unpack; "
                               "test ! -e /run/fleet-deploy.lock && echo unlocked"
                         ).split() == ["0", "unlocked"]
    assert worker_state() == before  # current, config and env untouched
    assert {name: state for name, state in unit_state().items() if name in WORKERS} == \
        {name: units[name] for name in WORKERS}  # the agent neither restarted nor stopped
    # the next deploy (the good release, pre-staging off) goes on as usual
    again = fleet.run("deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.record(again.stdout)["status"] == "ok"
    assert broken in fleet.ssh("bezalel", "ls /opt/fleet/releases").split()  # kept, unused
