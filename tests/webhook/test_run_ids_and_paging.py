"""The receiver's run records: one run id for the dashboard's record and log, paging past the
newest 500 runs, no record path where no deploy ran, and a tag moved back marked a rollback
(real git, the stand-in deploy, the loopback fleet of :mod:`test_dispatch_loopback`)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from bus.timestamps import utc_timestamp
from fleet.cli import main
from fleet.webhook.api import MAX_RUN_ID
from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from fleet.webhook.dispatcher import drain
from fleet.webhook.records import list_runs
from tests.webhook.conftest import FleetRepo, auth, read_records
from tests.webhook.forge import READ_TOKEN, signed_push
from tests.webhook.test_board import basic
from tests.webhook.test_cli import http_url  # noqa: F401 (a fixture)
from tests.webhook.test_dispatch_loopback import loopback_fleet  # noqa: F401 (a fixture)


def deliver(client: FlaskClient, sha: str, delivery: str) -> int:
    """POST a signed push of PROD at ``sha``; the queued run's id."""
    body, headers = signed_push("gitea", "refs/tags/PROD", sha, delivery=delivery)
    response = client.post("/hooks/gitea", data=body, headers=headers)
    assert response.status_code == 202, response.json
    return int(response.json["run_id"])


def show(client: FlaskClient, run_id: int) -> dict[str, Any]:
    """``GET /runs/<id>``."""
    return dict(client.get(f"/runs/{run_id}", headers=auth()).json)


def fleet(*args: str) -> tuple[int, str]:
    """``fleet ARGS``: exit code and output."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def asking(settings: Settings, loopback: tuple[Path, Path]) -> tuple[Settings, Path]:
    """``settings`` asking the loopback fleet what it runs, and that fleet's state file."""
    registry, state = loopback
    return replace(settings, health_check="http", env={
        **settings.env, "FLEET_REGISTRY": str(registry), "STANDIN_FLEET": str(state)}), state


def seed_runs(settings: Settings, count: int) -> None:
    """``count`` queued runs, ids 1 to ``count``."""
    conn = connect(settings.db_path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO runs (delivery_id, forge, tag, sha, pusher, status, queued_at) "
                "VALUES (?, 'gitea', 'PROD', ?, 'me', 'queued', ?)",
                [(f"d-{n}", f"{n:040x}", utc_timestamp()) for n in range(1, count + 1)])
    finally:
        conn.close()


def test_runs_page_past_the_newest_500(client: FlaskClient, settings: Settings) -> None:
    seed_runs(settings, 505)
    first = client.get("/runs?limit=500", headers=auth()).json
    assert [run["id"] for run in first["runs"]] == list(range(505, 5, -1))
    assert first["next_before"] == 6
    rest = client.get("/runs?limit=500&before=6", headers=auth()).json
    assert ([run["id"] for run in rest["runs"]], rest["next_before"]) == ([5, 4, 3, 2, 1], None)
    two = client.get("/runs?limit=2&before=5&status=queued", headers=auth()).json
    assert ([run["id"] for run in two["runs"]], two["next_before"]) == ([4, 3], 3)


@pytest.mark.parametrize("before", ["0", "-1", "x", "1.5", "²", str(MAX_RUN_ID + 1)])
def test_a_bad_before_is_a_400(client: FlaskClient, before: str) -> None:
    response = client.get(f"/runs?before={before}", headers=auth())
    assert response.status_code == 400
    assert response.json == {"error": f"before {before!r} is not a number from 1 to "
                                      f"{MAX_RUN_ID}"}


def test_paging_is_documented(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    parameters = {item["name"]: item for item in spec["paths"]["/runs"]["get"]["parameters"]}
    assert parameters["before"]["schema"] == {"type": "integer", "minimum": 1,
                                              "maximum": MAX_RUN_ID}
    assert "next_before" in spec["components"]["schemas"]["RunList"]["required"]


def test_fleet_runs_names_the_next_page(client: FlaskClient, settings: Settings) -> None:
    seed_runs(settings, 5)
    code, out = fleet("runs", "--limit", "2", "--state-dir", str(settings.state_dir))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["5", "4"]
    assert out.splitlines()[-1] == "older runs: fleet runs --before 4"
    code, out = fleet("runs", "--limit", "2", "--before", "2", "--state-dir",
                      str(settings.state_dir))
    assert (code, [line.split()[0] for line in out.splitlines()[1:]]) == (0, ["1"])


def test_dashboard_record_and_log_take_the_receivers_run_id(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("dashboard")
    fleet_repo.push_tag("PROD", sha)
    run_id = deliver(client, sha, "dash-1")
    drain(settings)
    run = show(client, run_id)
    record = client.get(f"/dashboard/runs/{run_id}.json", headers=basic(READ_TOKEN))
    assert record.status_code == 200
    assert record.json == json.loads(Path(run["record_path"]).read_text())
    assert record.json["run_id"] == run["fleet_run_id"]
    log = client.get(f"/dashboard/runs/{run_id}/log", headers=basic(READ_TOKEN))
    assert log.status_code == 200 and f"==> run {run_id}: tag PROD" in log.text
    for missing in ("9", "x", run["fleet_run_id"]):
        answer = client.get(f"/dashboard/runs/{missing}.json", headers=auth())
        assert (answer.status_code, answer.json) == (
            404, {"error": f"run {missing!r} has no run record here"})


def test_an_up_to_date_run_points_to_no_record(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo,
        loopback_fleet: tuple[Path, Path]) -> None:  # noqa: F811
    live, _ = asking(settings, loopback_fleet)
    a = fleet_repo.commit("A")
    fleet_repo.push_tag("PROD", a)
    deliver(client, a, "a-1")
    drain(live)
    again = deliver(client, a, "a-2")
    drain(live)
    run = show(client, again)
    assert run["status"] == "up-to-date"
    assert (run["fleet_run_id"], run["record_path"], run["rollback"]) == (None, None, False)
    code, out = fleet("runs", "show", str(again), "--state-dir", str(settings.state_dir))
    assert code == 0 and f"resolved to {a}, release {a[:12]}, fleet run -" in out
    answer = client.get(f"/dashboard/runs/{again}.json", headers=auth())
    assert answer.status_code == 404


def test_a_deploy_that_writes_no_record_points_to_none(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo) -> None:
    sha = fleet_repo.commit("no record")
    fleet_repo.push_tag("PROD", sha)
    run_id = deliver(client, sha, "none-1")
    drain(replace(settings, deploy_command=("true",)))
    run = show(client, run_id)
    assert (run["status"], run["record_path"]) == ("failed", None)
    assert run["fleet_run_id"].startswith(f"webhook-{run_id}-")


def test_moving_the_tag_back_is_marked_a_rollback(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo, record_file: Path,
        loopback_fleet: tuple[Path, Path]) -> None:  # noqa: F811
    live, state = asking(settings, loopback_fleet)
    a = fleet_repo.commit("A")
    fleet_repo.push_tag("PROD", a)
    first = deliver(client, a, "r-1")
    drain(live)
    c = fleet_repo.commit("C")
    fleet_repo.push_tag("PROD", c)
    forward = deliver(client, c, "r-2")
    drain(live)
    fleet_repo.push_tag("PROD", a)  # git tag -f PROD A: back to the older commit
    back = deliver(client, a, "r-3")
    drain(live)
    assert json.loads(state.read_text()) == {"alpha": a[:12], "beta": a[:12]}
    assert [read["sha"] for read in read_records(record_file)] == [a, c, a]
    runs = {run_id: show(client, run_id) for run_id in (first, forward, back)}
    assert [(runs[i]["rollback"], runs[i]["rollback_from"]) for i in runs] == [
        (False, None), (False, None), (True, c[:12])]
    assert runs[back]["status"] == "ok"
    assert runs[back]["summary"] == (f"rollback from release {c[:12]}: deployed release "
                                     f"{a[:12]} to 2 host(s)")
    assert (f"==> rollback: tag PROD was moved back from release {c[:12]} to {a[:12]}, an "
            "older commit") in runs[back]["log"]
    code, out = fleet("runs", "--state-dir", str(settings.state_dir))
    kinds = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert (code, kinds) == (0, {str(back): "rollback", str(forward): "deploy",
                                 str(first): "deploy"})
    code, out = fleet("runs", "show", str(back), "--state-dir", str(settings.state_dir))
    assert f"rollback: the tag was moved back from release {c[:12]}" in out.splitlines()


def test_a_rollback_is_seen_without_asking_the_fleet(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo) -> None:
    """With ``FLEET_HEALTH_CHECK=off`` the receiver's last deploy stands for the fleet."""
    a = fleet_repo.commit("A")
    fleet_repo.push_tag("PROD", a)
    deliver(client, a, "off-1")
    drain(settings)
    c = fleet_repo.commit("C")
    fleet_repo.push_tag("PROD", c)
    deliver(client, c, "off-2")
    drain(settings)
    fleet_repo.push_tag("PROD", a)
    back = deliver(client, a, "off-3")
    drain(settings)
    assert (show(client, back)["rollback"], show(client, back)["rollback_from"]) == (True,
                                                                                    c[:12])


def test_a_version_3_database_gains_the_rollback_column(tmp_path: Path) -> None:
    from importlib import resources

    text = resources.files("fleet.webhook").joinpath("schema.sql").read_text()
    old = text.replace("    health TEXT NOT NULL DEFAULT '[]',\n    rollback_from TEXT\n",
                       "    health TEXT NOT NULL DEFAULT '[]'\n")
    assert old != text
    path = tmp_path / "webhook.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(old + "\nPRAGMA user_version = 3;")
    conn.execute("INSERT INTO runs (delivery_id, forge, tag, sha, pusher, status, queued_at) "
                 "VALUES ('d', 'gitea', 'PROD', ?, 'me', 'ok', '2026-12-01T00:00:00.000Z')",
                 ("a" * 40,))
    conn.commit()
    conn.close()
    upgraded = connect(path)
    try:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == 4
        (run,) = list_runs(upgraded)
        assert (run["id"], run["rollback"], run["rollback_from"]) == (1, False, None)
    finally:
        upgraded.close()


def test_fleet_runs_pages_over_http(client: FlaskClient, settings: Settings,
                                    http_url: str) -> None:  # noqa: F811
    seed_runs(settings, 3)
    code, out = fleet("runs", "--limit", "2", "--url", http_url, "--token", READ_TOKEN)
    assert (code, out.splitlines()[-1]) == (0, "older runs: fleet runs --before 2")
    code, out = fleet("runs", "--before", "2", "--url", http_url, "--token", READ_TOKEN)
    assert (code, [line.split()[0] for line in out.splitlines()[1:]]) == (0, ["1"])
