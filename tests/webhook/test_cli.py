"""``fleet runs`` and ``fleet webhook serve`` through click's runner."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from fleet.cli import main
from fleet.webhook.config import Settings
from fleet.webhook.dispatcher import drain
from tests.webhook.conftest import FleetRepo
from tests.webhook.forge import READ_TOKEN, signed_push

SETTINGS_VARS = ("FLEET_WEBHOOK_SECRET", "FLEET_GITLAB_TOKEN", "FLEET_READ_TOKEN",
                 "FLEET_REPO_URL", "FLEET_STATE_DIR", "FLEET_WEBHOOK_CONFIG", "FLEET_WEBHOOK_URL")


@pytest.fixture
def deployed(client: FlaskClient, settings: Settings, fleet_repo: FleetRepo) -> str:
    """One successful run (id 1) of a fresh commit; returns its sha."""
    sha = fleet_repo.commit("cli")
    fleet_repo.push_tag("PROD", sha)
    body, headers = signed_push("gitea", "refs/tags/PROD", sha, delivery="cli-1")
    client.post("/hooks/gitea", data=body, headers=headers)
    drain(settings)
    return sha


@pytest.fixture
def http_url(app: Flask) -> Iterator[str]:
    """The app served over real HTTP on loopback (werkzeug, in a thread)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def run(*args: str) -> tuple[int, str, str]:
    """Run ``fleet ARGS``; exit code, stdout, stderr."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_runs_lists_from_the_state_dir(deployed: str, settings: Settings) -> None:
    code, out, _ = run("runs", "--state-dir", str(settings.state_dir))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "STATUS", "KIND", "TAG", "SHA", "PUSHER", "QUEUED",
                              "SUMMARY"]
    assert row.split()[:6] == ["1", "ok", "deploy", "PROD", deployed[:12], "alice"]
    assert row.endswith(f"deployed release {deployed[:12]} to 2 host(s)")


def test_runs_json_and_show_agree_with_the_api(deployed: str, settings: Settings,
                                               http_url: str) -> None:
    code, out, _ = run("runs", "--json", "--state-dir", str(settings.state_dir))
    local = json.loads(out)
    code_http, out_http, _ = run("runs", "--json", "--url", http_url, "--token", READ_TOKEN)
    assert (code, code_http) == (0, 0)
    assert json.loads(out_http) == local
    assert local[0]["commit_sha"] == deployed
    _, shown, _ = run("runs", "show", "1", "--json", "--url", http_url, "--token", READ_TOKEN)
    assert json.loads(shown)["hosts"]["alpha"]["changed"] == ["Install release"]


def test_runs_show_prints_one_run(deployed: str, settings: Settings) -> None:
    code, out, _ = run("runs", "show", "1", "--state-dir", str(settings.state_dir))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "run 1: ok"
    assert lines[1] == f"tag PROD claimed at {deployed} by alice via gitea (delivery cli-1)"
    assert lines[2].startswith(f"resolved to {deployed}, release {deployed[:12]}, fleet run "
                               "webhook-1-")
    assert "  stage canary: alpha ok" in lines
    assert "  stage workers: beta ok" in lines
    assert f"  alpha            ok          {deployed[:12]} 1 changed, restarted" in lines
    assert f"stand-in deploy of {deployed}" in out


def test_runs_show_of_an_unknown_run(deployed: str, settings: Settings) -> None:
    code, _, err = run("runs", "show", "9", "--state-dir", str(settings.state_dir))
    assert code == 1
    assert err.splitlines() == ["Error: run 9 doesn't exist",
                                "Hint: List the runs with `fleet runs`."]


def test_runs_without_a_database(tmp_path: Path) -> None:
    code, _, err = run("runs", "--state-dir", str(tmp_path))
    assert code == 1
    assert err.splitlines()[0] == f"Error: {tmp_path}/webhook.sqlite3: no webhook database here"


def test_runs_with_a_wrong_token(http_url: str) -> None:
    code, _, err = run("runs", "--url", http_url, "--token", "wrong-token-000000000")
    assert code == 1
    assert err.splitlines() == [f"Error: {http_url}/runs: the read token was refused",
                                "Hint: Pass the receiver's FLEET_READ_TOKEN with --token."]


def test_serve_refuses_to_start_without_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEET_WEBHOOK_SECRET", "s" * 20)
    monkeypatch.setenv("FLEET_READ_TOKEN", "r" * 20)
    code, _, err = run("webhook", "serve")
    assert code == 1
    assert err.splitlines() == [
        "Error: FLEET_REPO_URL is not set: it names the fleet repository to deploy from "
        "(URL, path or file://)",
        "Hint: Set FLEET_REPO_URL in the environment or the config file."]


@pytest.mark.parametrize("command", [["runs"], ["runs", "show"], ["webhook"],
                                     ["webhook", "serve"], ["webhook", "dispatch"]])
def test_every_command_has_help(command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0
    assert len(out.split("Options:")[0].strip().splitlines()) >= 3
