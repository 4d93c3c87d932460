"""End to end on the lab: ``fleet webhook serve`` on loopback (gunicorn and its dispatcher)
deploys the lab fleet with the real ``python -m fleet deploy`` on real pushes of PROD,
delivered as Gitea delivers them. The tests run in order on one receiver state dir:

1. push PROD at A, then deliver the pushes for C and B out of order: C ends deployed; A's body
   posted again with a new delivery id deploys nothing and is recorded ``up-to-date``;
2. the web workers killed during a deploy: it completes, ``ok``, whole log, no unmasked file;
3. a release whose gateway cannot start: the canary fails verify and is rolled back, the
   workers are never touched, the run fails naming the host and the reason.

Run alone with: ``FLEET_TEST_LAB=hooklab pytest -m lab tests/webhook/test_e2e_lab.py``
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fleet.core.registry import load_registry
from tests.waiting import wait_for
from tests.webhook.conftest import (
    REPO,
    FleetRepo,
    Receiver,
    git,
)
from tests.webhook.forge import GITLAB_TOKEN, READ_TOKEN, SECRET, signed_push

pytestmark = [pytest.mark.lab, pytest.mark.slow]
ORCH = "ezra-primary"
DEPLOY_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> FleetRepo:
    """A bare clone of the checkout's committed HEAD and a working clone pushing to it."""
    base = tmp_path_factory.mktemp("hook-e2e")
    bare, work = base / "fleet.git", base / "fleet"
    git("clone", "-q", "--bare", str(REPO), str(bare))
    git("clone", "-q", str(bare), str(work))
    return FleetRepo(work=work, bare=bare)


@pytest.fixture(scope="module")
def receiver_env(lab_registry: Path, repo: FleetRepo,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The receiver's environment: the lab registry, HTTP health checks, a state dir."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("FLEET_DEPLOY_COMMAND", "FLEET_BROKEN_RELEASE", "FLEET_RUN_ID",
                          "FLEET_RECORDS_DIR", "FLEET_SECRETS")}
    env.update(FLEET_WEBHOOK_SECRET=SECRET, FLEET_GITLAB_TOKEN=GITLAB_TOKEN,
               FLEET_READ_TOKEN=READ_TOKEN, FLEET_REPO_URL=f"file://{repo.bare}",
               FLEET_STATE_DIR=str(tmp_path_factory.mktemp("hook-state")),
               FLEET_REGISTRY=str(lab_registry), FLEET_HEALTH_CHECK="http",
               FLEET_DEPLOY_TIMEOUT=str(DEPLOY_TIMEOUT))
    return env


@pytest.fixture
def receiver(receiver_env: dict[str, str]) -> Iterator[Receiver]:
    started = Receiver(receiver_env, deploy_timeout=DEPLOY_TIMEOUT)
    yield started
    started.stop()


def releases(lab_registry: Path) -> dict[str, str | None]:
    """The release each lab agent's /health reports."""
    found = {}
    for agent in load_registry(lab_registry):
        try:
            found[agent.name] = requests.get(agent.health_endpoint, timeout=5).json()["release"]
        except (requests.RequestException, ValueError, KeyError):
            found[agent.name] = None
    return found


STATE: dict[str, str] = {}


def test_out_of_order_pushes_deploy_what_prod_points_to_and_a_replay_deploys_nothing(
        receiver: Receiver, repo: FleetRepo, lab_registry: Path) -> None:
    a = repo.commit("A")
    repo.push_tag("PROD", a)
    first = receiver.post(*signed_push("gitea", "refs/tags/PROD", a, delivery="lab-a"))
    # A run deploys what the tag points to when it resolves it: wait until A's has
    wait_for(lambda: receiver.run(first)["commit_sha"] == a, what="A's deploy to resolve PROD")
    b = repo.commit("B")
    repo.push_tag("PROD", b)
    c = repo.commit("C")
    repo.push_tag("PROD", c)
    late_c = receiver.post(*signed_push("gitea", "refs/tags/PROD", c, before=b))
    late_b = receiver.post(*signed_push("gitea", "refs/tags/PROD", b, before=a))

    run_a = receiver.wait(first)
    assert run_a["status"] == "ok", f"{run_a['summary']}\n{run_a['log'][-4000:]}"
    run_b = receiver.wait(late_b)
    assert run_b["status"] == "ok", f"{run_b['summary']}\n{run_b['log'][-4000:]}"
    assert (run_b["sha"], run_b["commit_sha"], run_b["release"]) == (b, c, c[:12])
    assert [stage["stage"] for stage in run_b["stages"]] == ["canary", "workers"]
    assert run_b["stages"][0]["hosts"] == [ORCH]
    agents = list(load_registry(lab_registry).agents)
    assert sorted(run_b["hosts"]) == sorted(agents)
    assert {entry["status"] for entry in run_b["hosts"].values()} == {"ok"}
    assert Path(run_b["record_path"]).exists()
    run_c = receiver.run(late_c)
    assert (run_c["status"], run_c["superseded_by"]) == ("superseded", late_b)
    assert releases(lab_registry) == {name: c[:12] for name in agents}

    replay = receiver.post(*signed_push("gitea", "refs/tags/PROD", a, delivery="lab-a-again"))
    run = receiver.wait(replay)
    assert (run["status"], run["sha"], run["commit_sha"]) == ("up-to-date", a, c), run["summary"]
    assert (run["exit_status"], run["fleet_run_id"], run["record_path"]) == (None, None, None)
    assert "fleet deploy" not in run["log"]
    assert releases(lab_registry) == {name: c[:12] for name in agents}
    STATE["c"] = c


def test_killing_the_web_workers_during_a_deploy_does_not_touch_it(
        receiver: Receiver, repo: FleetRepo, lab_registry: Path,
        receiver_env: dict[str, str]) -> None:
    d = repo.commit("D")
    repo.push_tag("PROD", d)
    run_id = receiver.post(*signed_push("gitea", "refs/tags/PROD", d))
    run = wait_for(lambda: (lambda r: r if "fleet deploy" in r["log"] else None)(
        receiver.run(run_id)), timeout=120, what="the deploy command to start")
    workers = receiver.workers()
    assert len(workers) == 2 and run["worker_pid"] not in workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    run = receiver.wait(run_id)
    assert run["status"] == "ok", f"{run['summary']}\n{run['log'][-4000:]}"
    assert run["log"].rstrip().endswith(f"==> ok: deployed release {d[:12]} to 3 host(s)")
    logs = Path(receiver_env["FLEET_STATE_DIR"]) / "logs"
    assert not list(logs.glob("*.unmasked"))
    assert set(releases(lab_registry).values()) == {d[:12]}
    STATE["d"] = d


def test_a_release_whose_gateway_cannot_start_is_rolled_back_on_the_canary_only(
        receiver_env: dict[str, str], repo: FleetRepo, lab_registry: Path) -> None:
    before = STATE["d"][:12]
    broken = Receiver({**receiver_env, "FLEET_BROKEN_RELEASE": "exit"},
                      deploy_timeout=DEPLOY_TIMEOUT)
    try:
        e = repo.commit("E")
        repo.push_tag("PROD", e)
        run = broken.wait(broken.post(*signed_push("gitea", "refs/tags/PROD", e)))
    finally:
        broken.stop()
    assert run["status"] == "failed", f"{run['summary']}\n{run['log'][-4000:]}"
    assert run["release"] == f"{e[:12]}-broken-exit"
    assert run["hosts"][ORCH]["status"] == "rolled_back"
    assert run["summary"].startswith(
        f"release {e[:12]}-broken-exit failed: {ORCH} rolled_back (")
    assert run["stages"][0]["stage"] == "canary"
    assert run["stages"][0]["outcome"] == {ORCH: "rolled_back"}
    assert all(status == "skipped" for stage in run["stages"][1:]
               for status in stage["outcome"].values())
    workers = [name for name in load_registry(lab_registry).agents if name != ORCH]
    assert all(name not in run["hosts"] or run["hosts"][name]["status"] == "skipped"
               for name in workers)
    assert run["summary"].endswith(f"; not deployed: {', '.join(workers)}")
    assert releases(lab_registry) == {name: before for name in [ORCH, *workers]}
