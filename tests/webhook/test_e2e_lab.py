"""End to end on the lab: a real git push of PROD, delivered as Gitea delivers it, deploys the
lab fleet with the real ``pyinfra -y --json inventory.py deploy.py``.

Run alone with: ``FLEET_TEST_LAB=webhook pytest -m lab tests/webhook/test_e2e_lab.py``
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from fleet.registry import load_registry
from tests.webhook.conftest import REPO, FleetRepo, Server, auth, git, wait_for
from tests.webhook.forge import ZERO, signed_push

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_a_gitea_push_of_prod_deploys_the_lab_at_that_sha(
        lab_registry: Path, serve: Callable[..., Server], tmp_path: Path) -> None:
    bare, work = tmp_path / "fleet-e2e.git", tmp_path / "fleet-e2e"
    git("clone", "-q", "--bare", str(REPO), str(bare))  # the checkout's committed HEAD
    git("clone", "-q", str(bare), str(work))
    fleet = FleetRepo(work=work, bare=bare)
    sha = fleet.commit("webhook end-to-end test")
    fleet.push_tag("PROD", sha)
    server = serve(workers=2, FLEET_REPO_URL=f"file://{bare}", FLEET_REGISTRY=str(lab_registry),
                   FLEET_DEPLOY_COMMAND="pyinfra -y --json inventory.py deploy.py",
                   FLEET_HEALTH_CHECK="fleet", FLEET_DEPLOY_TIMEOUT="1800")
    run = deliver(server, sha, before=ZERO)
    assert run["status"] == "success", f"{run['summary']}\n{run['log'][-4000:]}"
    assert run["commit_sha"] == sha
    agents = list(load_registry(lab_registry).agents)
    assert sorted(run["hosts"]) == sorted(agents)
    assert all(entry["status"] == "ok" and entry["failed"] == 0
               for entry in run["hosts"].values())
    assert sum(entry["changed"] for entry in run["hosts"].values()) > 0
    assert [item["agent"] for item in run["health"]] == agents
    assert all(item["healthy"] for item in run["health"])
    assert {item["release"] for item in run["health"]} == {sha[:12]}

    moved = fleet.commit("move PROD")  # git tag -f PROD + force push: a moving tag deploys too
    fleet.push_tag("PROD", moved)
    run = deliver(server, moved, before=sha)
    assert run["status"] == "success", f"{run['summary']}\n{run['log'][-4000:]}"
    assert {item["release"] for item in run["health"]} == {moved[:12]}


def deliver(server: Server, sha: str, before: str) -> dict[str, Any]:
    """POST the push as Gitea would and wait for its run to finish; the run record."""
    body, headers = signed_push("gitea", "refs/tags/PROD", sha, before=before)
    answer = requests.post(f"{server.url}/hooks/gitea", data=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    run_url = f"{server.url}/runs/{answer.json()['run_id']}"

    def finished() -> dict[str, Any] | None:
        run = requests.get(run_url, headers=auth(), timeout=10).json()
        return None if run["status"] in ("queued", "running") else dict(run)

    return dict(wait_for(finished, timeout=1800, what="the lab deploy"))
