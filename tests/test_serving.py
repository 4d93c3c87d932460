"""The one server setup (:mod:`fleet.core.serving`): settings gunicorn takes, JSON for requests
over the limits, and every ``fleet ... serve`` command and the gateway's unit using it."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from gunicorn.config import Config
from gunicorn.workers.ggevent import GeventWorker

from fleet.core import serving

REPO = Path(__file__).resolve().parents[1]


def test_every_setting_is_one_gunicorn_takes() -> None:
    config = Config()
    for name, value in serving.OPTIONS.items():
        config.set(name, value)
        assert config.settings[name].get() == value
    assert issubclass(config.worker_class, GeventWorker)


def limited_app() -> Flask:
    app = Flask(__name__)
    app.get("/health")(lambda: {"status": "ok"})
    limited: Flask = serving.limited(app)
    return limited


@pytest.mark.parametrize(("query", "headers", "status", "error"), [
    ("", {}, 200, None),
    ("x=" + "a" * 4080, {}, 414, "request line is 4103 bytes, over the limit of 4094"),
    ("", {f"X-F{n}": "1" for n in range(50)}, 431,
     "request has 51 header fields, over the limit of 50"),
    ("", {"X-Big": "b" * 4090}, 431, "header field X-Big is 4097 bytes, over the limit of 4094"),
], ids=["within", "request line", "header fields", "header field"])
def test_a_request_over_the_limits_gets_a_json_error(query: str, headers: dict[str, str],
                                                     status: int, error: str | None) -> None:
    client = limited_app().test_client()
    client.environ_base = {}
    response = client.get(f"/health?{query}" if query else "/health", headers=headers)
    assert response.status_code == status
    assert response.is_json
    if error:
        answer = response.get_json()
        assert answer == {"error": error, "hint": answer["hint"]}


def test_the_414_hint_says_to_shorten_the_url_in_both_refusers() -> None:
    """A GET (or DELETE) has no body to move a value into: the hint of both 414s (the app's
    limit, gunicorn's own) says to shorten the URL, never to send the value in the body."""
    from gunicorn.http.errors import LimitRequestLine

    from fleet.core.http_worker import refusal

    client = limited_app().test_client()
    client.environ_base = {}
    hint = client.get("/health?x=" + "a" * 4100).get_json()["hint"]
    found = refusal(LimitRequestLine(8191, 8190), 8190, 100, 8190)
    assert found is not None and found[2] == hint
    assert hint.startswith("Shorten the URL") and "body" not in hint


@pytest.mark.parametrize("path", ["fleet/cli/gateway.py", "fleet/cli/dashboard.py",
                                  "fleet/cli/webhook.py"])
def test_every_serve_command_uses_the_one_setup(path: str) -> None:
    source = (REPO / path).read_text(encoding="utf-8")
    assert "FactoryServer(" in source and "worker_class" not in source


def test_the_gateway_unit_uses_the_one_setup() -> None:
    unit = (REPO / "fleet/control/templates/fleet-agent.service.j2").read_text(encoding="utf-8")
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--config python:fleet.serving " in start and "--worker-class" not in start

