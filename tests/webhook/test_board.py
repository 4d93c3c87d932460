"""The dashboard on the receiver: behind the read token (Bearer, or Basic for a browser), its
runs with links to their masked logs, and its drift checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from flask.testing import FlaskClient

from bus.timestamps import utc_timestamp
from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from tests.webhook.conftest import auth
from tests.webhook.forge import READ_TOKEN


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}


def seed(settings: Settings) -> None:
    """One finished run with a log, and one drift check that found drift."""
    log = settings.state_dir / "logs" / "run-1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("==> run 1\nFLEET_WEBHOOK_SECRET=********\n")
    conn = connect(settings.db_path)
    conn.execute(
        "INSERT INTO runs (delivery_id, forge, tag, sha, pusher, status, queued_at, ended_at, "
        "release, log_path, summary, hosts) VALUES ('d1', 'gitea', 'PROD', ?, 'me', 'ok', ?, ?, "
        "'abcabcabcabc', ?, 'deployed release abcabcabcabc to 1 host(s)', ?)",
        ("a" * 40, utc_timestamp(), utc_timestamp(), str(log),
         json.dumps({"bezalel": {"status": "ok", "changed": ["Soul | Agent soul (read-only)"]}})))
    conn.execute("INSERT INTO drift_checks (started_at, status, drifted, summary, alert) VALUES "
                 "(?, 'drift', '[\"bezalel\"]', '1 of 1 host(s) drifted: bezalel', 'appeared')",
                 (utc_timestamp(),))
    conn.close()


def test_the_dashboard_wants_the_read_token(client: FlaskClient) -> None:
    refused = client.get("/dashboard/")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="fleet dashboard"'
    assert "any user name and the token as password" in refused.get_json()["error"]
    assert client.get("/dashboard/", headers=basic("wrong-token-value")).status_code == 401
    assert client.get("/dashboard/live", headers=basic(READ_TOKEN)).status_code == 200
    assert client.get("/dashboard/", headers=auth()).status_code == 200


def test_runs_link_their_masked_logs_and_drift_checks_show(settings: Settings,
                                                           client: FlaskClient) -> None:
    seed(settings)
    html = client.get("/dashboard/", headers=basic(READ_TOKEN)).get_data(as_text=True)
    assert 'href="/dashboard/runs/1/log"' in html
    assert "deployed release abcabcabcabc to 1 host(s)" in html
    assert "Soul | Agent soul (read-only)" in html
    assert '<li class="run" data-check="1" data-status="drift">' in html
    assert "(alert: drift appeared)" in html
    log = client.get("/dashboard/runs/1/log", headers=basic(READ_TOKEN))
    assert (log.status_code, log.mimetype) == (200, "text/plain")
    assert "FLEET_WEBHOOK_SECRET=********" in log.get_data(as_text=True)
    for missing in ("2", "x", "1" * 40):
        answer = client.get(f"/dashboard/runs/{missing}/log", headers=auth())
        assert answer.status_code == 404


def test_without_a_registry_yet_the_page_says_so(settings: Settings,
                                                 client: FlaskClient) -> None:
    assert not Path(settings.state_dir / "work" / "registry.yaml").exists()
    html = client.get("/dashboard/", headers=auth()).get_data(as_text=True)
    assert '<p class="problem" role="alert">The fleet could not be checked: ' in html
