"""The dispatcher on loopback: deploy what the tag points to now, ``up-to-date`` from the live
fleet, and deploys that survive killed web workers (real git, real gunicorn, real processes).

A loopback "fleet": an HTTP server answering each agent's ``/health`` with the release in
``$STANDIN_FLEET``, which the stand-in deploy writes as it deploys; the registry points the
agents' health endpoints at it and ``FLEET_HEALTH_CHECK=http`` asks it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from fleet.core.errors import WebhookError
from fleet.webhook.checkout import fetch
from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from fleet.webhook.dispatcher import drain, run, running
from fleet.webhook.driftcheck import queue_heal
from fleet.webhook.lock import DispatcherLock
from fleet.webhook.wake import Listener, notify
from tests.waiting import wait_for
from tests.webhook.conftest import (
    FleetRepo,
    Receiver,
    auth,
    read_records,
)
from tests.webhook.forge import signed_push

pytestmark = pytest.mark.slow


def deliver(client: FlaskClient, body: bytes, headers: dict[str, str]) -> int:
    """POST a signed push; the queued run's id."""
    response = client.post("/hooks/gitea", data=body, headers=headers)
    assert response.status_code == 202, response.json
    return int(response.json["run_id"])


def show(client: FlaskClient, run_id: int) -> dict[str, Any]:
    """``GET /runs/<id>``."""
    return dict(client.get(f"/runs/{run_id}", headers=auth()).json)


@pytest.fixture
def loopback_fleet(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A registry of agents alpha and beta whose ``/health`` reports the release in a state
    file; yields (registry, state file)."""
    state = tmp_path / "fleet-state.json"
    state.write_text("{}")

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            agent = self.path.rsplit("/", 1)[-1]
            body = json.dumps({"status": "ok", "agent": agent, "problems": [],
                               "release": json.loads(state.read_text()).get(agent)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    registry = tmp_path / "registry.yaml"
    registry.write_text("wizards:\n" + "".join(
        f"  {name}:\n    host: 127.0.0.1\n    role: {role}\n    model: m\n"
        f"    gateway_port: {20000 + index}\n"
        f"    health_endpoint: http://127.0.0.1:{port}/health/{name}\n"
        for index, (name, role) in enumerate([("alpha", "orchestrator"), ("beta", "worker")])))
    yield registry, state
    server.shutdown()
    server.server_close()


def test_pushes_out_of_order_deploy_what_the_tag_points_to(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo,
        record_file: Path) -> None:
    """Push A (its deploy starts), then the deliveries for C and B arrive out of order: the
    next run resolves PROD to C, deploys C and covers the other; each run keeps the sha its
    push claimed beside the commit it resolved."""
    a = fleet_repo.commit("A")
    fleet_repo.push_tag("PROD", a)
    first = deliver(client, *signed_push("gitea", "refs/tags/PROD", a))
    slow = replace(settings, env={**settings.env, "STANDIN_SLEEP": "2"})
    thread = threading.Thread(target=drain, args=(slow,))
    thread.start()
    try:
        wait_for(lambda: "stand-in deploy of" in show(client, first)["log"],
                 what="the deploy of A to start")
        b = fleet_repo.commit("B")
        fleet_repo.push_tag("PROD", b)
        c = fleet_repo.commit("C")
        fleet_repo.push_tag("PROD", c)
        late_c = deliver(client, *signed_push("gitea", "refs/tags/PROD", c, before=b))
        late_b = deliver(client, *signed_push("gitea", "refs/tags/PROD", b, before=a))
    finally:
        thread.join()
    drain(settings)
    assert [line["sha"] for line in read_records(record_file)] == [a, c]
    runs = {run_id: show(client, run_id) for run_id in (first, late_c, late_b)}
    assert [(runs[i]["status"], runs[i]["sha"], runs[i]["commit_sha"]) for i in runs] == [
        ("ok", a, a), ("superseded", c, None), ("ok", b, c)]
    assert runs[late_c]["superseded_by"] == late_b
    assert runs[late_b]["release"] == c[:12]
    assert runs[late_b]["log"].count("==> tag PROD points to " + c) == 1


def test_a_replayed_push_is_up_to_date_and_deploys_nothing(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo, record_file: Path,
        loopback_fleet: tuple[Path, Path]) -> None:
    """A's signed body posted again with a new delivery id resolves PROD (at C), finds every
    agent on C's release and starts no deploy; a self-heal run queued by a drift check deploys
    C though (its drift is in files); after a manual rollback of one agent the same replay
    deploys C again: the fleet is asked, not the database."""
    registry, state = loopback_fleet
    live = replace(settings, health_check="http",
                   env={**settings.env, "FLEET_REGISTRY": str(registry),
                        "STANDIN_FLEET": str(state)})
    a = fleet_repo.commit("A")
    fleet_repo.push_tag("PROD", a)
    deliver(client, *signed_push("gitea", "refs/tags/PROD", a, delivery="a-1"))
    drain(live)
    c = fleet_repo.commit("C")
    fleet_repo.push_tag("PROD", c)
    deliver(client, *signed_push("gitea", "refs/tags/PROD", c, before=a))
    drain(live)
    assert json.loads(state.read_text()) == {"alpha": c[:12], "beta": c[:12]}
    assert len(read_records(record_file)) == 2

    replay = deliver(client, *signed_push("gitea", "refs/tags/PROD", a, delivery="a-2"))
    drain(live)
    run = show(client, replay)
    assert (run["status"], run["sha"], run["commit_sha"], run["release"]) == (
        "up-to-date", a, c, c[:12])
    assert run["summary"] == (f"every agent runs release {c[:12]} already (tag PROD at "
                              f"{c[:12]}); nothing deployed")
    assert [item["release"] for item in run["health"]] == [c[:12], c[:12]]
    assert (run["exit_status"], run["fleet_run_id"], run["record_path"]) == (None, None, None)
    assert len(read_records(record_file)) == 2  # no deploy command started

    with contextlib.closing(connect(settings.db_path)) as conn:  # a drift check found drift
        heal = queue_heal(conn, live, 9, c)
    drain(live)
    run = show(client, heal)
    assert (run["status"], run["commit_sha"], run["release"]) == ("ok", c, c[:12]), run
    assert len(read_records(record_file)) == 3  # self-heal deploys though the release is on

    state.write_text(json.dumps({"alpha": c[:12], "beta": a[:12]}))  # `fleet rollback beta`
    again = deliver(client, *signed_push("gitea", "refs/tags/PROD", a, delivery="a-3"))
    drain(live)
    assert show(client, again)["status"] == "ok"
    assert read_records(record_file)[-1]["sha"] == c
    assert json.loads(state.read_text()) == {"alpha": c[:12], "beta": c[:12]}


def test_the_other_tags_queued_runs_are_not_covered(client: FlaskClient, settings: Settings,
                                                    fleet_repo: FleetRepo,
                                                    record_file: Path) -> None:
    sha = fleet_repo.commit("two tags")
    fleet_repo.push_tag("PROD", sha)
    fleet_repo.push_tag("STAGING", sha)
    both = replace(settings, deploy_tag="PROD,STAGING")
    client.application.config["SETTINGS"] = both
    staging = deliver(client, *signed_push("gitea", "refs/tags/STAGING", sha))
    prod = deliver(client, *signed_push("gitea", "refs/tags/PROD", sha))
    assert drain(both) == [prod, staging]
    assert [show(client, run_id)["status"] for run_id in (staging, prod)] == ["ok", "ok"]


def test_an_upload_pack_url_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    log = tmp_path / "git.log"
    with log.open("wb") as handle, pytest.raises(WebhookError) as caught:
        fetch(f"--upload-pack=touch {marker};", tmp_path / "state", handle)
    assert "starts with '-'; git would read it as an option" in str(caught.value)
    assert not marker.exists()
    assert not (tmp_path / "state" / "repo.git").exists()


# --- real gunicorn and a real dispatcher process (``fleet webhook serve``) -----------------


def test_killing_the_web_workers_never_touches_the_deploy(
        receivers: Callable[..., Receiver], fleet_repo: FleetRepo, settings: Settings) -> None:
    sha = fleet_repo.commit("survives")
    fleet_repo.push_tag("PROD", sha)
    receiver = receivers(STANDIN_SLEEP="4")
    run_id = receiver.push(sha)
    run = wait_for(lambda: (lambda r: r if "stand-in deploy: second 1" in r["log"] else None)(
        receiver.run(run_id)), what="the deploy to run")
    dispatcher = run["worker_pid"]
    workers = receiver.workers()
    assert dispatcher in receiver.children() and len(workers) == 2 and dispatcher not in workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    run = receiver.wait(run_id)
    assert run["status"] == "ok", run["summary"]
    assert run["worker_pid"] == dispatcher
    for line in (f"stand-in deploy of {sha}", "stand-in deploy: second 4",
                 f"==> ok: deployed release {sha[:12]} to 2 host(s)"):
        assert line in run["log"]
    assert not list((settings.state_dir / "logs").glob("*.unmasked"))


def test_a_receiver_killed_as_a_whole_marks_its_run_interrupted_on_restart(
        receivers: Callable[..., Receiver], fleet_repo: FleetRepo, settings: Settings,
        tmp_path: Path) -> None:
    sha = fleet_repo.commit("killed")
    fleet_repo.push_tag("PROD", sha)
    pidfile = tmp_path / "deploy.pid"
    receiver = receivers(STANDIN_SLEEP="60", STANDIN_PIDFILE=str(pidfile),
                         STANDIN_PRINT=f"hook secret {settings.webhook_secret}")
    run_id = receiver.push(sha)
    wait_for(lambda: "stand-in deploy: second 1" in receiver.run(run_id)["log"],
             what="the deploy to run")
    everything = [receiver.process.pid, *receiver.children(), int(pidfile.read_text())]
    for pid in everything:
        os.kill(pid, signal.SIGKILL)
    receiver.process.wait(timeout=10)
    raw = settings.state_dir / "logs" / f"run-{run_id}.log.unmasked"
    assert raw.exists()

    restarted = receivers(STANDIN_SLEEP="0")
    run = restarted.wait(run_id)
    assert run["status"] == "interrupted"
    assert run["summary"] == ("the receiver stopped during this run (crash or kill); its "
                              "outcome is unknown")
    assert not raw.exists()
    assert "stand-in deploy: second 1" in run["log"]
    assert "hook secret ***" in run["log"] and str(settings.webhook_secret) not in run["log"]
    again = restarted.push(sha)
    assert restarted.wait(again)["status"] == "ok"


def test_a_wake_up_reaches_the_listening_dispatcher_only(tmp_path: Path) -> None:
    assert notify(tmp_path) is False  # no dispatcher: the web worker starts one
    with Listener(tmp_path) as wake:
        assert wake.wait(0.01) is False
        assert all(notify(tmp_path) for _ in range(100_000))  # a full pipe is no error
        started = time.monotonic()
        assert wake.wait(5) is True and time.monotonic() - started < 1
        assert wake.wait(0.01) is False  # the burst was one wake-up
    assert notify(tmp_path) is False


def test_one_dispatcher_per_state_dir(settings: Settings) -> None:
    holder = DispatcherLock(settings.state_dir)
    assert holder.acquire(blocking=False)
    try:
        assert running(settings.state_dir)
        assert run(settings, parent_pid=os.getpid()) is False  # another one runs: exits at once
    finally:
        holder.release()
    assert not running(settings.state_dir)
