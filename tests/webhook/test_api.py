"""The read API and its OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fleet.dashboard.openapi import SPEC as DASHBOARD
from fleet.webhook.openapi import SPEC
from fleet.webhook.queue import STATUSES
from tests.webhook.conftest import auth
from tests.webhook.forge import signed_push

READ_ENDPOINTS = ["/runs", "/runs/1", "/healthz"]


@pytest.mark.parametrize("path", READ_ENDPOINTS)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0000000000", "Basic abc",
                                    "test-read-token-0123456789"])
def test_reads_need_the_read_token(client: FlaskClient, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "missing or wrong read token; send "
                                      "'Authorization: Bearer <FLEET_READ_TOKEN>'"}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="fleet-webhook"'


def test_runs_lists_newest_first_and_filters(client: FlaskClient) -> None:
    for sha in ("a" * 40, "b" * 40):
        body, headers = signed_push("gitea", "refs/tags/PROD", sha)
        client.post("/hooks/gitea", data=body, headers=headers)
    runs = client.get("/runs", headers=auth()).json["runs"]
    assert [(run["id"], run["sha"], run["status"]) for run in runs] == [
        (2, "b" * 40, "queued"), (1, "a" * 40, "queued")]
    assert client.get("/runs?limit=1", headers=auth()).json["runs"][0]["id"] == 2
    assert client.get("/runs?status=ok", headers=auth()).json == {"runs": [],
                                                                  "next_before": None}


@pytest.mark.parametrize(("query", "message"), [
    ("limit=0", "limit '0' is not a number from 1 to 500"),
    ("limit=many", "limit 'many' is not a number from 1 to 500"),
    ("status=done", f"status 'done' is not one of {', '.join(STATUSES)}"),
])
def test_bad_queries_are_400(client: FlaskClient, query: str, message: str) -> None:
    response = client.get(f"/runs?{query}", headers=auth())
    assert response.status_code == 400
    assert response.json == {"error": message}


def test_an_unknown_run_is_404(client: FlaskClient) -> None:
    response = client.get("/runs/42", headers=auth())
    assert response.status_code == 404
    assert response.json == {"error": "run 42 doesn't exist"}


def test_healthz_reports_the_queue(client: FlaskClient) -> None:
    body, headers = signed_push("github", "refs/tags/PROD", "c" * 40)
    client.post("/hooks/github", data=body, headers=headers)
    assert client.get("/healthz", headers=auth()).json == {
        "status": "ok", "deploy_tag": "PROD", "queued": 1, "running": [], "last_run": None}


def test_openapi_is_public_and_documents_every_route(app: Flask, client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json == SPEC
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    # the three receivers are documented one by one (each with its required headers), and
    # /hooks/{forge} for any other name (404)
    forges = {("/hooks/gitea", "post"), ("/hooks/github", "post"), ("/hooks/gitlab", "post")}
    assert routes == documented - forges


def test_every_documented_response_schema_exists() -> None:
    text = str(SPEC)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in SPEC["components"]["schemas"]


def test_the_dashboard_routes_are_documented_as_the_dashboard_documents_them() -> None:
    def schema(path: str) -> Any:
        return SPEC["paths"][path]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"]
    ours = SPEC["components"]["schemas"]
    assert schema("/dashboard/state.json") == {"$ref": "#/components/schemas/DashboardState"}
    assert schema("/dashboard/runs/{run_id}.json") == {
        "$ref": "#/components/schemas/DashboardRunRecord"}
    assert ours["DashboardState"]["required"] == DASHBOARD["components"]["schemas"]["State"][
        "required"]
    assert ours["DashboardState"]["properties"]["agents"]["items"] == {
        "$ref": "#/components/schemas/DashboardAgent"}


@pytest.mark.parametrize("forge", ["gitea", "github", "gitlab"])
def test_every_status_a_hook_answers_is_documented(forge: str) -> None:
    responses = SPEC["paths"][f"/hooks/{forge}"]["post"]["responses"]
    assert set(responses) == {"202", "400", "401", "409", "413", "415"}
    other = SPEC["paths"]["/hooks/{forge}"]["post"]["responses"]
    assert set(other) == {"202", "400", "401", "404", "409", "413", "415"}


@pytest.mark.parametrize(("forge", "required"), [
    ("gitea", {"X-Gitea-Event", "X-Gitea-Delivery", "X-Gitea-Signature"}),
    ("github", {"X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"}),
    ("gitlab", {"X-Gitlab-Event", "X-Gitlab-Event-UUID", "X-Gitlab-Token"}),
])
def test_the_headers_a_receiver_needs_are_documented_as_required(forge: str,
                                                                 required: set[str]) -> None:
    parameters = SPEC["paths"][f"/hooks/{forge}"]["post"]["parameters"]
    assert {p["name"] for p in parameters if p["in"] == "header" and p["required"]} == required


def test_the_documented_run_statuses_are_the_ones_the_api_filters_by() -> None:
    assert SPEC["components"]["schemas"]["Run"]["properties"]["status"]["enum"] == list(STATUSES)
