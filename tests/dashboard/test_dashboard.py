"""The dashboard without a lab: its page, live part and JSON on a fleet whose hosts are closed
loopback ports (every agent down), the records it lists, and how it judges an agent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from fleet.control.expected import config_hash
from fleet.control.status import AgentStatus
from fleet.core.registry import load_registry
from fleet.dashboard.app import create_app
from fleet.dashboard.data import Dashboard


@pytest.fixture
def client(fleet_dir: Path) -> FlaskClient:
    app = create_app({"REGISTRY_PATH": str(fleet_dir / "registry.yaml"),
                      "RECORDS_DIR": str(fleet_dir / "records"), "REFRESH_S": 2.0})
    return app.test_client()


def test_page_lists_every_agent_and_the_runs(client: FlaskClient) -> None:
    page = client.get("/dashboard/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<tr id="agent-alpha" data-agent="alpha" data-state="down">' in html
    assert '<tr id="agent-beta" data-agent="beta" data-state="down">' in html
    assert "0 ok</span>" in html and "2 down</span>" in html
    assert "last deploy: abc123abc123" in html
    assert "Soul | Agent soul (read-only)" in html
    assert "verify failed: /health answers 503" in html
    assert 'data-refresh-ms="2000"' in html
    assert "http://" not in html.replace("http://127.0.0.1", "")  # nothing from elsewhere


def test_live_part_and_json_carry_the_same_state(client: FlaskClient) -> None:
    live = client.get("/dashboard/live")
    assert live.status_code == 200
    assert live.headers["Cache-Control"] == "no-store"
    assert "<html" not in live.get_data(as_text=True)
    state = client.get("/dashboard/state.json").get_json()
    assert state["counts"] == {"ok": 0, "drift": 0, "down": 2}
    assert [agent["name"] for agent in state["agents"]] == ["alpha", "beta"]
    assert all(agent["health"] != "ok" and agent["last_seen"] is None
               for agent in state["agents"])


def test_a_fleet_that_cannot_be_probed_is_said_on_the_page(fleet_dir: Path) -> None:
    registry = fleet_dir / "registry.yaml"
    registry.write_text(registry.read_text().replace("  known_hosts: known_hosts\n", ""))
    app = create_app({"REGISTRY_PATH": str(registry), "RECORDS_DIR": str(fleet_dir / "records")})
    page = app.test_client().get("/dashboard/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<p class="problem" role="alert">The fleet could not be checked: ' in html
    assert "fleet.known_hosts is not set" in html
    assert html.count('data-state="down"') == 2


def test_run_records_are_served_by_valid_id_only(client: FlaskClient) -> None:
    record = client.get("/dashboard/runs/20261130T100000Z-aaaaaa.json")
    assert record.status_code == 200
    assert record.get_json()["release"] == "abc123abc123"
    missing = client.get("/dashboard/runs/20261130T100000Z-bbbbbb.json")
    assert (missing.status_code, missing.get_json()) == (
        404, {"error": "run 20261130T100000Z-bbbbbb doesn't exist"})
    bad = client.get("/dashboard/runs/..%2Fregistry.json")
    assert bad.status_code in (400, 404)
    assert client.get("/dashboard/runs/-x.json").status_code == 400


def test_runs_have_no_log_here_and_every_error_is_json(client: FlaskClient) -> None:
    log = client.get("/dashboard/runs/20261130T100000Z-aaaaaa/log")
    assert (log.status_code, log.get_json()) == (
        404, {"error": "run '20261130T100000Z-aaaaaa' has no log here"})
    assert client.get("/dashboard/runs/%C3%A9/log").status_code == 400
    for path, code in (("/dashboard/static/nothing.css", 404), ("/nothing", 404)):
        answer = client.get(path)
        assert (answer.status_code, answer.mimetype) == (code, "application/json")
    refused = client.post("/dashboard/state.json")
    assert (refused.status_code, refused.mimetype) == (405, "application/json")
    assert "GET" in refused.headers["Allow"]


def test_the_openapi_document_names_every_route(client: FlaskClient) -> None:
    app = client.application
    documented = set(client.get("/openapi.json").get_json()["paths"])
    routes = {rule.rule.replace("<run_id>", "{run_id}").replace("<path:filename>", "{filename}")
              for rule in app.url_map.iter_rules()}
    assert routes == documented


def test_a_record_that_is_not_an_object_is_passed_over(fleet_dir: Path) -> None:
    (fleet_dir / "records" / "20261201T100000Z-bbbbbb.json").write_text("[1, 2]")
    client = create_app({"REGISTRY_PATH": str(fleet_dir / "registry.yaml"),
                         "RECORDS_DIR": str(fleet_dir / "records")}).test_client()
    state = client.get("/dashboard/state.json")
    assert state.status_code == 200
    assert [run["run_id"] for run in state.get_json()["runs"]] == ["20261130T100000Z-aaaaaa"]


@pytest.mark.parametrize(("status", "state", "soul", "config", "release"), [
    ({}, "ok", "ok", "ok", "ok"),
    ({"soul_sha256": "f" * 64}, "drift", "drift", "ok", "ok"),
    ({"release": "999999999999"}, "drift", "ok", "ok", "drift"),
    ({"config_hash": "0" * 64}, "drift", "ok", "drift", "ok"),
    ({"health": "HTTP 503"}, "down", "ok", "ok", "ok"),
])
def test_an_agent_is_judged_against_what_it_must_run(
        fleet_dir: Path, status: dict[str, str], state: str, soul: str, config: str,
        release: str) -> None:
    registry = load_registry(fleet_dir / "registry.yaml")
    agent = registry.get("alpha")
    found = AgentStatus(agent="alpha", role="orchestrator", host="127.0.0.1", ssh="ok",
                        health="ok", release="abc123abc123", config_hash=config_hash(agent),
                        soul_sha256=hashlib.sha256(b"# alpha\n").hexdigest())
    for key, value in status.items():
        setattr(found, key, value)
    source = Dashboard(fleet_dir / "registry.yaml", fleet_dir / "records")
    view = source._view(registry, agent, found, {"fleet_bus_outbox_depth": 3}, "abc123abc123",
                        "2026-11-30T10:00:00Z")
    assert (view.state, view.soul_state, view.config_state, view.release_state) == (
        state, soul, config, release)
    assert view.outbox_depth == 3 and view.dead_letters is None
    assert view.last_seen == (None if state == "down" else "2026-11-30T10:00:00Z")


def test_agents_are_grouped_by_region(fleet_dir: Path) -> None:
    registry = fleet_dir / "registry.yaml"
    text = registry.read_text().replace("  known_hosts: known_hosts\n",
                                        "  known_hosts: known_hosts\n  regions: [us, eu]\n")
    text = text.replace("    role: orchestrator\n", "    role: orchestrator\n    region: eu\n")
    registry.write_text(text.replace("    role: worker\n", "    role: worker\n    region: us\n"))
    client = create_app({"REGISTRY_PATH": str(registry),
                         "RECORDS_DIR": str(fleet_dir / "records")}).test_client()
    html = client.get("/dashboard/live").get_data(as_text=True)
    rows = [line.strip() for line in html.splitlines() if line.strip().startswith("<tr ")]
    assert [row[:40] for row in rows] == [
        '<tr class="region"><th scope="rowgroup" ', '<tr id="agent-beta" data-agent="beta" da',
        '<tr class="region"><th scope="rowgroup" ', '<tr id="agent-alpha" data-agent="alpha" ']
    assert ">Region us</th>" in html and ">Region eu</th>" in html
    state = client.get("/dashboard/state.json").get_json()
    assert [(agent["name"], agent["region"]) for agent in state["agents"]] == [
        ("beta", "us"), ("alpha", "eu")]
