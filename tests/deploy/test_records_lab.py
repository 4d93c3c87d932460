"""The run record is the audit trail: on a lab of 5 nodes, each host's record lists exactly its
own changed operations after a cold deploy, none after a no-change deploy, and a converged
fleet's dry run plans none (``fleet deploy --dry`` and plain pyinfra agree)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fleet import lab
from tests.deploy.conftest import Fleet, make_fleet
from tests.lab_fixtures import claim_test_lab, fresh_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
NODES = 5


@pytest.fixture(scope="module")
def fleet5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A clean clone wired to a lab of 5 fresh nodes of its own."""
    claimed = claim_test_lab("records")
    try:
        registry = fresh_lab(claimed.lab, nodes=NODES)
        yield make_fleet(registry, tmp_path_factory.mktemp("records"))
    finally:
        lab.down(claimed.lab)
        claimed.release()


def test_cold_deploy_records_each_hosts_own_changes(fleet5: Fleet) -> None:
    done = fleet5.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = fleet5.record(done.stdout)["hosts"]
    assert len(hosts) == NODES
    workers = [name for name in hosts if name != "ezra-primary"]
    for name, entry in hosts.items():
        changed = entry["changed"]
        assert entry["status"] == "ok"
        assert changed, f"{name}: a cold deploy changes something"
        assert len(changed) == len(set(changed)), f"{name}: {changed}"
        others = [other for other in hosts if other != name]
        assert not [op for op in changed if any(other in op for other in others)], \
            f"{name} lists another host's operations: {changed}"
    # the workers run the same operations: their records list the same changes, one each
    assert all(hosts[name]["changed"] == hosts[workers[0]]["changed"] for name in workers)


def test_no_change_deploy_records_no_change(fleet5: Fleet) -> None:
    done = fleet5.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = fleet5.record(done.stdout)["hosts"]
    assert {name: (entry["changed"], entry["restarted"]) for name, entry in hosts.items()} == \
        {name: ([], False) for name in hosts}


def test_converged_dry_run_plans_no_change(fleet5: Fleet) -> None:
    done = fleet5.run("deploy", "--dry")
    assert done.returncode == 0, done.stdout + done.stderr
    record = fleet5.record(done.stdout)
    assert {name: (entry["status"], entry["planned"]) for name, entry in
            record["hosts"].items()} == {name: ("planned", []) for name in record["hosts"]}
    assert "0 change(s)" in done.stdout
    plain = fleet5.pyinfra("--json", "inventory.py", "deploy.py")  # no -y: a dry run
    assert plain.returncode == 0, plain.stdout + plain.stderr
    plan = json.loads(plain.stdout)["plan"]
    assert plan and not [(op["name"], op["hosts_with_change"], op["hosts_with_conditional_change"])
                         for op in plan
                         if op["hosts_with_change"] or op["hosts_with_conditional_change"]]

