"""The receivers: every refusal (status, exact message, no run) and what deploys."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from tests.webhook.forge import ZERO, gitea_headers, gitlab_headers, signed_push

SHA = "1f" * 20
OLD = "2e" * 20
FORGES = ("gitea", "github", "gitlab")


def count(settings: Settings, table: str = "runs") -> int:
    """Rows in ``table`` of the receiver's database."""
    conn = connect(settings.db_path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("forge", FORGES)
def test_a_push_of_the_deploy_tag_queues_a_run(client: FlaskClient, settings: Settings,
                                               forge: str) -> None:
    body, headers = signed_push(forge, "refs/tags/PROD", SHA, delivery="d-1")
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 202
    assert response.json == {"status": "queued", "run_id": 1, "delivery": "d-1", "tag": "PROD",
                             "sha": SHA, "run": "/runs/1"}
    run = client.get("/runs/1", headers={"Authorization": "Bearer test-read-token-0123456789"})
    assert run.json["status"] == "queued"
    assert run.json["pusher"] == {"gitea": "alice", "github": "bob", "gitlab": "carol"}[forge]
    assert run.json["repository"] == "ops/fleet"


@pytest.mark.parametrize("forge", FORGES)
def test_a_moved_tag_deploys_too(client: FlaskClient, forge: str) -> None:
    body, headers = signed_push(forge, "refs/tags/PROD", SHA, before=OLD)
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 202
    assert response.json["status"] == "queued"


@pytest.mark.parametrize(("forge", "header"), [("gitea", "X-Gitea-Signature"),
                                               ("github", "X-Hub-Signature-256"),
                                               ("gitlab", "X-Gitlab-Token")])
def test_missing_signature_is_401(client: FlaskClient, settings: Settings, forge: str,
                                  header: str) -> None:
    body, headers = signed_push(forge, "refs/tags/PROD", SHA)
    del headers[header]
    if forge == "github":
        headers.pop("X-Hub-Signature", None)
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 401
    where = {"gitea": "in Gitea", "github": "on GitHub", "gitlab": "in GitLab"}[forge]
    what = "secret token" if forge == "gitlab" else "secret"
    variable = "FLEET_GITLAB_TOKEN" if forge == "gitlab" else "FLEET_WEBHOOK_SECRET"
    assert response.json == {"error": f"missing {header} header; set the webhook's {what} "
                                      f"{where} to the value of {variable}"}
    assert count(settings) == 0
    assert count(settings, "deliveries") == 0


def test_wrong_gitea_signature_is_401(client: FlaskClient, settings: Settings) -> None:
    body, _ = signed_push("gitea", "refs/tags/PROD", SHA)
    headers = gitea_headers(body, secret="another-secret-entirely-0000")
    response = client.post("/hooks/gitea", data=body, headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "X-Gitea-Signature does not match the body signed with "
                             "FLEET_WEBHOOK_SECRET; make the webhook's secret in Gitea equal "
                             "FLEET_WEBHOOK_SECRET"}
    assert count(settings) == 0


def test_a_body_changed_after_signing_is_401(client: FlaskClient, settings: Settings) -> None:
    body, headers = signed_push("github", "refs/tags/PROD", SHA)
    tampered = body.replace(SHA.encode(), OLD.encode())
    response = client.post("/hooks/github", data=tampered, headers=headers)
    assert response.status_code == 401
    assert response.json["error"].startswith("X-Hub-Signature-256 does not match the body")
    assert count(settings) == 0


def test_wrong_gitlab_token_is_401(client: FlaskClient, settings: Settings) -> None:
    body, _ = signed_push("gitlab", "refs/tags/PROD", SHA)
    headers = gitlab_headers(body, token="not-the-token-at-all-000")
    response = client.post("/hooks/gitlab", data=body, headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "X-Gitlab-Token does not match FLEET_GITLAB_TOKEN; make "
                             "the webhook's secret token in GitLab equal FLEET_GITLAB_TOKEN"}
    assert count(settings) == 0


def test_a_secret_in_the_payload_is_not_trusted(client: FlaskClient, settings: Settings) -> None:
    payload = json.loads(signed_push("gitea", "refs/tags/PROD", SHA)[0])
    payload["secret"] = "test-webhook-secret-0123456789"  # Gitea < 1.14 sent it in the body
    body = json.dumps(payload).encode()
    headers = gitea_headers(body, secret="attacker-chosen-secret-000")
    assert client.post("/hooks/gitea", data=body, headers=headers).status_code == 401
    assert count(settings) == 0


@pytest.mark.parametrize(("ref", "after", "before", "reason"), [
    ("refs/heads/main", SHA, OLD,
     "ref 'refs/heads/main' is not a tag; only pushes of a tag matching 'PROD' deploy"),
    ("refs/tags/v1.2", SHA, ZERO, "tag 'v1.2' does not match the deploy tag 'PROD'"),
    ("refs/tags/PROD", ZERO, SHA,
     "tag 'PROD' was deleted (after is all zeros); deleting a tag does not deploy"),
])
@pytest.mark.parametrize("forge", FORGES)
def test_pushes_that_do_not_deploy_are_202_ignored(client: FlaskClient, settings: Settings,
                                                   forge: str, ref: str, after: str,
                                                   before: str, reason: str) -> None:
    body, headers = signed_push(forge, ref, after, before=before, delivery="d-7")
    if forge == "gitlab" and ref.startswith("refs/heads/"):
        headers["X-Gitlab-Event"] = "Push Hook"
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 202
    assert response.json == {"status": "ignored", "reason": reason, "delivery": "d-7"}
    assert count(settings) == 0


@pytest.mark.parametrize(("forge", "event", "reason"), [
    ("gitea", "issues", "Gitea event 'issues' does not deploy; only 'push' events of the deploy "
                        "tag do"),
    ("github", "ping", "GitHub event 'ping' does not deploy; only 'push' events of the deploy "
                       "tag do"),
    ("gitlab", "Merge Request Hook", "GitLab event 'Merge Request Hook' does not deploy; only "
                                     "'Tag Push Hook' events of the deploy tag do"),
])
def test_other_events_are_202_ignored(client: FlaskClient, settings: Settings, forge: str,
                                      event: str, reason: str) -> None:
    body, headers = signed_push(forge, "refs/tags/PROD", SHA, delivery="e-1")
    for name in ("X-Gitea-Event", "X-GitHub-Event", "X-Gitlab-Event"):
        if name in headers:
            headers[name] = event
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 202
    assert response.json == {"status": "ignored", "reason": reason, "delivery": "e-1"}
    assert count(settings) == 0


@pytest.mark.parametrize(("forge", "header"), [("gitea", "X-Gitea-Event"),
                                               ("github", "X-GitHub-Event"),
                                               ("gitlab", "X-Gitlab-Event")])
def test_a_missing_event_header_is_400(client: FlaskClient, settings: Settings, forge: str,
                                       header: str) -> None:
    body, headers = signed_push(forge, "refs/tags/PROD", SHA)
    del headers[header]
    response = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert response.status_code == 400
    name = {"gitea": "Gitea", "github": "GitHub", "gitlab": "GitLab"}[forge]
    assert response.json == {"error": f"missing {header} header; {name} names the event of "
                                      "every delivery there"}
    assert count(settings) == 0


def test_a_missing_delivery_id_is_400(client: FlaskClient, settings: Settings) -> None:
    body, headers = signed_push("gitlab", "refs/tags/PROD", SHA)
    del headers["X-Gitlab-Event-UUID"], headers["Idempotency-Key"]
    response = client.post("/hooks/gitlab", data=body, headers=headers)
    assert response.status_code == 400
    assert response.json == {"error": "missing X-Gitlab-Event-UUID header; every GitLab "
                                      "delivery carries a unique id"}
    assert count(settings) == 0


@pytest.mark.parametrize("forge", FORGES)
def test_a_replayed_delivery_is_409(client: FlaskClient, settings: Settings,
                                    forge: str) -> None:
    body, headers = signed_push(forge, "refs/tags/PROD", SHA, delivery="same-id")
    assert client.post(f"/hooks/{forge}", data=body, headers=headers).status_code == 202
    replay = client.post(f"/hooks/{forge}", data=body, headers=headers)
    assert replay.status_code == 409
    assert replay.json["error"].startswith("delivery 'same-id' was already received at ")
    assert replay.json["error"].endswith(" (run 1); replayed deliveries are refused")
    assert count(settings) == 1


def test_a_replay_of_an_ignored_delivery_is_409_too(client: FlaskClient,
                                                    settings: Settings) -> None:
    body, headers = signed_push("gitea", "refs/heads/main", SHA, delivery="branch-1")
    assert client.post("/hooks/gitea", data=body, headers=headers).status_code == 202
    replay = client.post("/hooks/gitea", data=body, headers=headers)
    assert replay.status_code == 409
    assert replay.json["error"].endswith("; replayed deliveries are refused")
    assert count(settings) == 0


def test_replays_are_refused_after_a_restart(settings: Settings) -> None:
    from fleet.webhook import create_app

    body, headers = signed_push("gitea", "refs/tags/PROD", SHA, delivery="durable")
    first = create_app({"SETTINGS": settings, "DISPATCH": False}).test_client()
    assert first.post("/hooks/gitea", data=body, headers=headers).status_code == 202
    second = create_app({"SETTINGS": settings, "DISPATCH": False}).test_client()
    assert second.post("/hooks/gitea", data=body, headers=headers).status_code == 409


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "body is not valid JSON: Expecting property name enclosed in double quotes: "
                   "line 1 column 2 (char 1)"),
    (b"", "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"[1, 2]", "body must be a JSON object (a push event)"),
    (b'{"ref": "refs/tags/PROD", "after": "nope"}',
     "field 'after' is 'nope', expected a 40 or 64 digit hex sha"),
    (b'{"after": "' + SHA.encode() + b'"}',
     "field 'ref' is None, expected a ref like 'refs/tags/NAME'"),
])
def test_malformed_bodies_are_400(client: FlaskClient, settings: Settings, body: bytes,
                                  message: str) -> None:
    response = client.post("/hooks/gitea", data=body, headers=gitea_headers(body))
    assert response.status_code == 400
    assert response.json == {"error": message}
    assert count(settings) == 0


def test_a_body_over_1_mib_is_413(client: FlaskClient, settings: Settings) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = client.post("/hooks/gitea", data=body, headers=gitea_headers(body))
    assert response.status_code == 413
    assert response.json == {"error": "body is larger than 1048576 bytes; a push event is far "
                                      "smaller, so this is not a push this receiver takes"}
    assert count(settings) == 0


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_body_that_is_not_json_content_is_415(client: FlaskClient, settings: Settings,
                                                content_type: str | None) -> None:
    body, headers = signed_push("gitea", "refs/tags/PROD", SHA)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/hooks/gitea", data=body, headers=headers)
    assert response.status_code == 415
    shown = repr(content_type) if content_type else "'(none)'"
    assert response.json == {"error": f"Content-Type {shown} is not supported; configure the "
                                      "Gitea webhook to send application/json"}
    assert count(settings) == 0


def test_the_deploy_tag_may_be_a_glob(settings: Settings) -> None:
    from dataclasses import replace

    from fleet.webhook import create_app

    app = create_app({"SETTINGS": replace(settings, deploy_tag="release-*, PROD"),
                      "DISPATCH": False})
    client = app.test_client()
    body, headers = signed_push("github", "refs/tags/release-7", SHA)
    assert client.post("/hooks/github", data=body, headers=headers).json["status"] == "queued"
    body, headers = signed_push("github", "refs/tags/v7", SHA)
    assert client.post("/hooks/github", data=body, headers=headers).json["status"] == "ignored"


def test_a_gitlab_system_hook_tag_push_deploys(client: FlaskClient) -> None:
    body, headers = signed_push("gitlab", "refs/tags/PROD", SHA)
    headers["X-Gitlab-Event"] = "System Hook"
    assert client.post("/hooks/gitlab", data=body, headers=headers).json["status"] == "queued"


def test_unknown_forge_is_a_json_404(client: FlaskClient) -> None:
    response = client.post("/hooks/bitbucket", data=b"{}")
    assert response.status_code == 404
    assert "error" in response.json
