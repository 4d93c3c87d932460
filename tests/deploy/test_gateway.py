"""The gateway's /health and agent card, through Flask's test client."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from flask import Flask

from fleet.core.errors import DeployError
from fleet.core.release_marker import Broken
from fleet.node.gateway import SettingsError, create_app, health

REGISTRY = """\
fleet: {name: testfleet}
wizards:
  alpha:
    host: 127.0.0.1
    role: orchestrator
    model: m1
    capabilities: [code, review]
    description: The first.
"""


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """A fake node layout: registry, config, soul and state dir."""
    paths = {name: tmp_path / name for name in ("registry.yaml", "config.json", "soul.md")}
    paths["registry.yaml"].write_text(REGISTRY)
    paths["config.json"].write_text('{"agent": "alpha"}\n')
    paths["soul.md"].write_text("# Soul\n")
    paths["state"] = tmp_path / "state"
    return paths


def make_app(node: dict[str, Path], **extra: object) -> Flask:
    return create_app({
        "AGENT": "alpha", "REGISTRY": str(node["registry.yaml"]),
        "STATE_DIR": str(node["state"]), "CONFIG": str(node["config.json"]),
        "SOUL": str(node["soul.md"]), "RELEASE": "abc123", "RELEASE_BROKEN": False,
        **extra,
    })


def test_health_reports_identity_and_hashes(node: dict[str, Path]) -> None:
    response = make_app(node).test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "ok" and body["problems"] == []
    assert (body["agent"], body["role"], body["model"]) == ("alpha", "orchestrator", "m1")
    assert body["release"] == "abc123"
    assert body["config_hash"] == hashlib.sha256(b'{"agent": "alpha"}\n').hexdigest()
    assert body["soul_sha256"] == hashlib.sha256(b"# Soul\n").hexdigest()
    assert body["state_writable"] is True
    assert body["uptime_s"] >= 0


def test_health_fails_on_missing_soul(node: dict[str, Path]) -> None:
    node["soul.md"].unlink()
    response = make_app(node).test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["problems"] == [f"soul file {node['soul.md']} is not readable"]


def test_health_fails_for_a_broken_release(node: dict[str, Path]) -> None:
    response = make_app(node, RELEASE_BROKEN=True).test_client().get("/health")
    assert response.status_code == 503
    assert "built broken on purpose" in response.get_json()["problems"][0]


def test_a_release_built_to_exit_stops_the_gateway_at_start_up(
        node: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "running_release", lambda: ("abc123-broken-exit", Broken.EXIT))
    with pytest.raises(DeployError, match=r"built broken on purpose .* exits at start-up"):
        make_app(node)


def test_health_fails_without_config(node: dict[str, Path]) -> None:
    node["config.json"].unlink()
    body = make_app(node).test_client().get("/health").get_json()
    assert body["status"] == "fail"
    assert body["config_hash"] is None


def test_agent_card_lists_capabilities_as_skills(node: dict[str, Path]) -> None:
    card = make_app(node).test_client().get("/.well-known/agent-card.json").get_json()
    assert card["name"] == "alpha"
    assert card["description"] == "The first."
    assert card["url"] == "http://127.0.0.1:8646/a2a"
    assert card["version"] == "abc123"
    assert [skill["id"] for skill in card["skills"]] == ["code", "review"]


def test_settings_come_from_the_agents_environment_and_only_the_known_ones(
        node: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``FLEET_NAME`` sets ``NAME`` (Flask's ``from_prefixed_env``, as text) for the gateway's
    and the bus's settings only: another ``FLEET_*`` variable of the env file (a secret, the
    release, Flask's own settings) never reaches the app."""
    env = {"FLEET_AGENT": "alpha", "FLEET_REGISTRY": str(node["registry.yaml"]),
           "FLEET_STATE_DIR": str(node["state"]), "FLEET_CONFIG": str(node["config.json"]),
           "FLEET_SOUL": str(node["soul.md"]), "FLEET_BUS_INBOX_QUOTA": "7",
           "FLEET_RELEASE": "ffffffffffff", "FLEET_RELEASE_BROKEN": "0",
           "FLEET_MAX_CONTENT_LENGTH": "1000000", "FLEET_DEBUG": "0",
           "FLEET_API_TOKEN": "s3cret-value", "FLEET_NESTED__PART": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(health, "running_release", lambda: ("abc123", Broken.NO))  # a node's
    app = create_app()
    assert (app.config["AGENT"], app.config["SOUL"]) == ("alpha", str(node["soul.md"]))
    assert app.extensions["bus"].inbox_quota == 7
    assert app.debug is False and app.config["MAX_CONTENT_LENGTH"] is None
    assert "s3cret-value" not in repr(dict(app.config)) and "NESTED" not in app.config
    answer = app.test_client().get("/health").get_json()
    assert (answer["release"], answer["status"]) == ("abc123", "ok"), answer
    assert app.test_client().post("/outbox", data=b"{}").status_code in (400, 401)


def test_a_setting_and_a_nested_one_of_the_same_name_are_refused(
        node: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_AGENT", "alpha")
    monkeypatch.setenv("FLEET_AGENT__X", "1")
    with pytest.raises(SettingsError, match="a nested one"):
        create_app({"REGISTRY": str(node["registry.yaml"]), "STATE_DIR": str(node["state"])})
