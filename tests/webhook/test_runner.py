"""Running deploys: real git fetches from a bare repo, a real stand-in deploy command."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from fleet.core.masking import Masker
from fleet.webhook.config import Settings
from fleet.webhook.current import fleet_releases
from fleet.webhook.dispatcher import drain
from fleet.webhook.health import check_health
from fleet.webhook.logcopy import MaskedLog, unmasked_path
from tests.waiting import wait_for
from tests.webhook.conftest import FleetRepo, auth, git, read_records
from tests.webhook.forge import signed_push


def push_tag(client: FlaskClient, sha: str, forge: str = "gitea") -> int:
    """Deliver a push of PROD at ``sha``; return the queued run id."""
    body, headers = signed_push(forge, "refs/tags/PROD", sha)
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 202, response.json
    return int(response.json["run_id"])


def show(client: FlaskClient, run_id: int) -> dict[str, Any]:
    """``GET /runs/<id>``."""
    response = client.get(f"/runs/{run_id}", headers=auth())
    assert response.status_code == 200
    return dict(response.json)


def test_a_push_deploys_the_tagged_commit(client: FlaskClient, settings: Settings,
                                          fleet_repo: FleetRepo, record_file: Path) -> None:
    sha = fleet_repo.commit("second")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    assert drain(settings) == [run_id]
    run = show(client, run_id)
    assert (run["status"], run["exit_status"], run["commit_sha"]) == ("ok", 0, sha)
    assert (run["sha"], run["release"]) == (sha, sha[:12])
    assert run["summary"] == f"deployed release {sha[:12]} to 2 host(s)"
    assert run["fleet_run_id"].startswith(f"webhook-{run_id}-")
    record = settings.state_dir / "records" / f"{run['fleet_run_id']}.json"
    assert run["record_path"] == str(record) and record.exists()
    assert run["hosts"] == {
        name: {"status": "ok", "release": sha[:12], "expected_release": sha[:12],
               "changed": ["Install release"], "restarted": True, "drift": []}
        for name in ("alpha", "beta")}
    assert run["stages"] == [
        {"stage": "canary", "hosts": ["alpha"], "outcome": {"alpha": "ok"}},
        {"stage": "workers", "hosts": ["beta"], "outcome": {"beta": "ok"}}]
    assert f"stand-in deploy of {sha}" in run["log"]
    assert run["log"].rstrip().endswith(f"==> ok: deployed release {sha[:12]} to 2 host(s)")
    assert run["started_at"] <= run["ended_at"]
    [line] = read_records(record_file)
    assert (line["run"], line["sha"], line["secret_seen"]) == (run_id, sha, False)
    work = settings.state_dir / "work"
    assert git("rev-parse", "HEAD", cwd=work) == sha
    assert (work / "CHANGES").read_text() == "first\nsecond\n"


def test_an_annotated_tag_deploys_the_commit_it_points_at(client: FlaskClient,
                                                          settings: Settings,
                                                          fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("annotated")
    git("tag", "-a", "-m", "release", "PROD", sha, cwd=fleet_repo.work)
    git("push", "-q", "origin", "refs/tags/PROD", cwd=fleet_repo.work)
    tag_object = git("rev-parse", "PROD", cwd=fleet_repo.work)
    assert tag_object != sha
    run_id = push_tag(client, tag_object, forge="github")
    drain(settings)
    run = show(client, run_id)
    assert (run["status"], run["sha"], run["commit_sha"]) == ("ok", tag_object, sha)


def test_queued_pushes_coalesce_into_one_deploy(client: FlaskClient, settings: Settings,
                                                fleet_repo: FleetRepo,
                                                record_file: Path) -> None:
    shas = [fleet_repo.commit(f"change {n}") for n in range(3)]
    fleet_repo.push_tag("PROD", shas[-1])
    ids = [push_tag(client, sha) for sha in shas]
    assert drain(settings) == [ids[-1]]
    assert [record["sha"] for record in read_records(record_file)] == [shas[-1]]
    assert [show(client, run_id)["status"] for run_id in ids] == [
        "superseded", "superseded", "ok"]
    assert show(client, ids[0])["summary"] == (
        f"covered by run {ids[-1]}, which deploys what tag PROD points to when it starts")
    assert show(client, ids[-1])["covers"] == ids[:-1]


def with_env(settings: Settings, **values: str) -> Settings:
    """``settings`` with more variables for the deploy's environment."""
    return replace(settings, env={**settings.env, **values})


def test_a_failing_deploy_is_recorded_as_failed(client: FlaskClient, settings: Settings,
                                                fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("broken")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    drain(with_env(settings, STANDIN_STATUS="failed"))
    run = show(client, run_id)
    assert (run["status"], run["exit_status"]) == ("failed", 1)
    assert run["summary"] == (f"release {sha[:12]} failed: alpha rolled_back (verify: /health "
                              "answered 503; rolled back); not deployed: beta")
    assert run["stages"] == [{"stage": "canary", "hosts": ["alpha"],
                              "outcome": {"alpha": "rolled_back"}}]


def test_a_deploy_that_writes_no_record_fails(client: FlaskClient, settings: Settings,
                                              fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("no record")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    drain(replace(settings, deploy_command=("true",)))
    run = show(client, run_id)
    assert (run["status"], run["exit_status"], run["hosts"]) == ("failed", 0, {})
    assert run["summary"] == (f"the deploy exited with status 0 and wrote no run record "
                              f"({run['fleet_run_id']}.json); see the log")


def test_a_deleted_tag_fails_the_run(client: FlaskClient, settings: Settings,
                                     fleet_repo: FleetRepo, record_file: Path) -> None:
    run_id = push_tag(client, "ab" * 20)  # PROD was never pushed
    drain(settings)
    run = show(client, run_id)
    assert (run["status"], run["commit_sha"]) == ("failed", None)
    assert run["summary"] == (f"tag 'PROD' does not exist in file://{fleet_repo.bare} (deleted "
                              "after the push?); nothing was deployed")
    assert read_records(record_file) == []


def test_a_missing_deploy_command_fails_the_run(client: FlaskClient, settings: Settings,
                                                fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("x")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    drain(replace(settings, deploy_command=("no-such-deploy-tool", "deploy.py")))
    run = show(client, run_id)
    assert run["status"] == "failed"
    assert run["summary"] == ("cannot start the deploy command 'no-such-deploy-tool': No such "
                              "file or directory; check FLEET_DEPLOY_COMMAND")


def test_a_deploy_over_its_timeout_is_stopped(client: FlaskClient, settings: Settings,
                                              fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("slow")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    drain(replace(with_env(settings, STANDIN_SLEEP="30"), deploy_timeout=0.5))
    run = show(client, run_id)
    assert run["status"] == "failed"
    assert run["summary"] == ("the deploy ran longer than FLEET_DEPLOY_TIMEOUT (0.5s) and was "
                              "stopped")


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """A 0600 secrets file holding one fleet-wide secret value."""
    path = tmp_path / "secrets.yaml"
    path.write_text("fleet:\n  OPENROUTER_API_KEY: sk-or-very-secret-value\n")
    path.chmod(0o600)
    return path


def test_secret_values_are_masked_in_the_log(client: FlaskClient, settings: Settings,
                                             fleet_repo: FleetRepo, secrets: Path) -> None:
    sha = fleet_repo.commit("masked")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    drain(with_env(settings, FLEET_SECRETS=str(secrets),
                   STANDIN_PRINT=f"key sk-or-very-secret-value, hook {settings.webhook_secret}"))
    log = show(client, run_id)["log"]
    assert "key ***, hook ***" in log
    assert "very-secret" not in log


def test_secrets_are_masked_while_the_deploy_runs(client: FlaskClient, settings: Settings,
                                                 fleet_repo: FleetRepo, secrets: Path) -> None:
    sha = fleet_repo.commit("masked while running")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    running = with_env(settings, FLEET_SECRETS=str(secrets), STANDIN_SLEEP="3",
                       STANDIN_PRINT=f"key sk-or-very-secret-value, hook {settings.webhook_secret}")
    thread = threading.Thread(target=drain, args=(running,))
    thread.start()
    try:
        run = wait_for(lambda: (lambda r: r if "key ***" in r["log"] else None)(
            show(client, run_id)), what="the masked line in the log of the running deploy")
        assert run["status"] == "running"
        assert "very-secret" not in run["log"]
        assert str(settings.webhook_secret) not in run["log"]
        raw = unmasked_path(Path(run["log_path"]))
        assert raw.stat().st_mode & 0o777 == 0o600
    finally:
        thread.join()
    run = show(client, run_id)
    assert run["status"] == "ok" and "very-secret" not in run["log"]
    assert not raw.exists()


def test_a_secret_split_across_writes_is_masked_once_its_line_is_whole(tmp_path: Path) -> None:
    raw, log = tmp_path / "run.log.unmasked", tmp_path / "run.log"
    copier = MaskedLog(raw, log, Masker(["sk-or-very-secret-value"]))
    raw.write_bytes(b"first line\nkey sk-or-very-")
    copier.copy()
    assert log.read_text() == "first line\n"
    with raw.open("ab") as handle:
        handle.write(b"secret-value done\nno newline sk-or-very-secret-value")
    copier.copy()
    assert log.read_text() == "first line\nkey *** done\n"
    copier.copy(final=True)
    assert log.read_text() == "first line\nkey *** done\nno newline ***"


class Health(BaseHTTPRequestHandler):
    """A gateway health endpoint that answers ok (or 503 on /broken)."""

    def do_GET(self) -> None:
        broken = self.path == "/broken"
        body = b'{"status": "fail", "problems": ["soul missing"]}' if broken else \
            b'{"status": "ok", "problems": []}'
        self.send_response(503 if broken else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def health_server() -> Iterator[int]:
    """A loopback HTTP server standing in for agents' gateways; yields its port."""
    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "status"), [("/health", "ok"), ("/broken", "unhealthy")])
def test_fleet_health_is_checked_after_the_deploy(client: FlaskClient, settings: Settings,
                                                  fleet_repo: FleetRepo, tmp_path: Path,
                                                  health_server: int, path: str,
                                                  status: str) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"wizards:\n  ezra:\n    host: 127.0.0.1\n    role: orchestrator\n"
                        f"    model: m\n    gateway_port: {health_server}\n"
                        f"    health_endpoint: http://127.0.0.1:{health_server}{path}\n")
    sha = fleet_repo.commit("health")
    fleet_repo.push_tag("PROD", sha)
    run_id = push_tag(client, sha)
    drain(replace(with_env(settings, FLEET_REGISTRY=str(registry)), health_check="http"))
    run = show(client, run_id)
    assert run["status"] == status
    assert [item["agent"] for item in run["health"]] == ["ezra"]
    if status == "unhealthy":
        assert run["summary"] == ("deployed, but the fleet is unhealthy: ezra (health HTTP 503: "
                                  "soul missing)")


@pytest.mark.parametrize("mode", ["http", "off"])
def test_the_check_after_a_deploy_and_what_runs_now_probe_alike(tmp_path: Path, mode: str,
                                                                health_server: int) -> None:
    """One probe per ``FLEET_HEALTH_CHECK`` mode (:func:`fleet.webhook.health.probe`) serves
    both; only an unloadable registry is read differently (unhealthy / nothing deployed)."""
    registry = tmp_path / "registry.yaml"
    registry.write_text("".join(
        f"{'wizards:' if n == 0 else ''}\n  a{n}:\n    host: 127.0.0.1\n    role: worker\n"
        f"    model: m\n    gateway_port: {health_server + n}\n    ssh_port: 9\n"
        f"    health_endpoint: http://127.0.0.1:{health_server}{path}\n"
        for n, path in enumerate(["/health", "/broken"])))
    healthy, records = check_health(registry, mode, 2)
    assert fleet_releases(registry, mode, 2) == records
    assert [item["agent"] for item in records] == ([] if mode == "off" else ["a0", "a1"])
    assert healthy == (mode == "off")
    missing = tmp_path / "none.yaml"
    assert fleet_releases(missing, mode, 2) == []
    assert check_health(missing, mode, 2)[0] == (mode == "off")
