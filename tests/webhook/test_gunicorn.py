"""The receiver under real gunicorn with several workers: concurrency, coalescing, and
``fleet webhook serve``. Killed web workers and a killed receiver: test_dispatch_loopback.py."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.waiting import wait_for
from tests.webhook.conftest import (
    PRODUCTION_WORKERS,
    FleetRepo,
    Receiver,
    Server,
    auth,
    read_records,
)
from tests.webhook.forge import signed_push

pytestmark = pytest.mark.slow


def post_push(server: Server, sha: str, forge: str = "gitea") -> tuple[requests.Response, float]:
    """Deliver a signed push of PROD at ``sha``; the response and its latency in seconds."""
    body, headers = signed_push(forge, "refs/tags/PROD", sha)
    started = time.perf_counter()
    response = requests.post(f"{server.url}/hooks/{forge}", data=body, headers=headers,
                             timeout=30)
    return response, time.perf_counter() - started


def runs(server: Server) -> list[dict[str, Any]]:
    """Every run, oldest first."""
    response = requests.get(f"{server.url}/runs?limit=500", headers=auth(), timeout=10)
    return sorted(response.json()["runs"], key=lambda run: run["id"])


def show(server: Server, run_id: int) -> dict[str, Any]:
    """``GET /runs/<id>``."""
    return dict(requests.get(f"{server.url}/runs/{run_id}", headers=auth(), timeout=10).json())


def settled(server: Server) -> list[dict[str, Any]] | None:
    """The runs once none is queued or running, else None."""
    found = runs(server)
    return None if any(run["status"] in ("queued", "running") for run in found) else found


@pytest.mark.parametrize("args", [(), PRODUCTION_WORKERS], ids=["sync", "production"])
def test_50_concurrent_pushes_deploy_one_at_a_time_and_the_newest_last(
        serve: Callable[..., Server], fleet_repo: FleetRepo, record_file: Path,
        args: tuple[str, ...]) -> None:
    shas = [fleet_repo.commit(f"change {n}") for n in range(50)]
    fleet_repo.push_tag("PROD", shas[-1])
    server = serve(workers=2, args=args, STANDIN_SLEEP="0.2")
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda sha: post_push(server, sha), shas))
    assert [response.status_code for response, _ in answers] == [202] * 50
    run_ids = {response.json()["run_id"] for response, _ in answers}
    assert len(run_ids) == 50
    final = wait_for(lambda: settled(server), timeout=120, what="all runs to finish")
    assert [run["id"] for run in final] == sorted(run_ids)
    by_id = {run["id"]: run for run in final}
    deployed = [run for run in final if run["status"] != "superseded"]
    assert {run["status"] for run in deployed} == {"ok"}
    for run in final:
        if run["status"] == "superseded":
            assert by_id[run["superseded_by"]]["status"] == "ok"
            assert run["superseded_by"] > run["id"]
    records = sorted(read_records(record_file), key=lambda record: record["start"])
    assert [record["run"] for record in records] == [run["id"] for run in deployed]
    for before, after in itertools.pairwise(records):
        assert after["start"] >= before["end"], "two deploys overlapped"
    newest = by_id[max(run_ids)]
    assert records[-1]["run"] == newest["id"]
    assert records[-1]["sha"] == newest["commit_sha"] == shas[-1]  # where PROD points
    assert len(records) < 50  # pushes during a deploy were coalesced


def test_fleet_webhook_serve_runs_the_receiver(receivers: Callable[..., Receiver],
                                               fleet_repo: FleetRepo,
                                               record_file: Path) -> None:
    sha = fleet_repo.commit("served")
    fleet_repo.push_tag("PROD", sha)
    receiver = receivers()
    assert receiver.wait(receiver.push(sha))["status"] == "ok"
    assert [record["sha"] for record in read_records(record_file)] == [sha]
    assert receiver.errors().splitlines()[0] == (
        f"fleet webhook: http://127.0.0.1:{receiver.port}/hooks/{{gitea,github,gitlab}} deploys "
        f"tag 'PROD' of file://{fleet_repo.bare}")
