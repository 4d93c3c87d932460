"""Hostile input to the receivers: every one a 4xx with a message naming the problem, never a
500, and nothing stored (no delivery, no run)."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from fleet.webhook.config import Settings
from tests.webhook.forge import ZERO, gitea_headers, gitea_payload, gitlab_headers
from tests.webhook.test_hooks import SHA, count


def post_gitea(client: FlaskClient, body: bytes, **environ: str) -> tuple[int, object]:
    """POST a correctly signed Gitea delivery of ``body``; status and JSON answer."""
    response = client.post("/hooks/gitea", data=body, headers=gitea_headers(body),
                           environ_overrides=environ)
    return response.status_code, response.json


def assert_nothing_stored(settings: Settings) -> None:
    """No run and no delivery row."""
    assert count(settings) == 0
    assert count(settings, "deliveries") == 0


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 100_000, "body is not valid JSON: arrays or objects nested too deeply for a push "
                     "event"),
    (b'{"ref": "refs/tags/PROD", "pusher": "\xed\xa0\x80"}',
     "body is not valid UTF-8: byte 37 (invalid continuation byte)"),
    (b'{"ref": "refs/tags/PROD", "x": "\xff"}',
     "body is not valid UTF-8: byte 32 (invalid start byte)"),
    (b'{"ref": "refs/tags/PROD", "pusher": {"login": "\\ud800"}}',
     "body is not valid JSON text: a string holds the lone UTF-16 surrogate U+D800 (an unpaired "
     "\\u escape)"),
    (b'{"\\udfff": 1}', "body is not valid JSON text: a string holds the lone UTF-16 surrogate "
                        "U+DFFF (an unpaired \\u escape)"),
    (b'{"ref": "refs/tags/PROD", "size": NaN}',
     "body is not valid JSON: NaN is not a JSON number (RFC 8259); send a string or null"),
    (b'{"size": -Infinity}',
     "body is not valid JSON: -Infinity is not a JSON number (RFC 8259); send a string or null"),
    (b'{"size": 1e999}',
     "body is not valid JSON: 1e999 is out of range for a JSON number (it would be Infinity)"),
    (b'"push"', "body must be a JSON object (a push event)"),
    (b"null", "body must be a JSON object (a push event)"),
    (b"17", "body must be a JSON object (a push event)"),
])
@pytest.mark.parametrize("event", ["push", "issues"])
def test_a_body_that_is_not_one_json_object_is_400(client: FlaskClient, settings: Settings,
                                                   body: bytes, message: str,
                                                   event: str) -> None:
    headers = gitea_headers(body, event=event)
    response = client.post("/hooks/gitea", data=body, headers=headers)
    assert (response.status_code, response.json) == (400, {"error": message})
    assert_nothing_stored(settings)


def test_a_paired_surrogate_escape_is_fine(client: FlaskClient, settings: Settings) -> None:
    payload = gitea_payload("refs/tags/PROD", SHA)
    payload["pusher"]["login"] = "\U0001f600"
    body = json.dumps(payload).encode()  # ensure_ascii: "\ud83d\ude00"
    assert b"\\ud83d\\ude00" in body
    status, answer = post_gitea(client, body)
    assert status == 202
    assert isinstance(answer, dict) and answer["status"] == "queued"


@pytest.mark.parametrize("after", [ZERO + "\n", SHA + "\n", " " + SHA, SHA.upper()])
def test_a_sha_with_anything_around_it_is_400(client: FlaskClient, settings: Settings,
                                             after: str) -> None:
    # "$" matched before a trailing newline: ZERO + "\n" passed as a sha that was not a
    # deletion, and queued a deploy of it
    body = json.dumps(gitea_payload("refs/tags/PROD", after)).encode()
    assert post_gitea(client, body) == (400, {
        "error": f"field 'after' is {after!r}, expected a 40 or 64 digit hex sha"})
    assert_nothing_stored(settings)


def test_a_malformed_before_is_400(client: FlaskClient, settings: Settings) -> None:
    body = json.dumps(gitea_payload("refs/tags/PROD", SHA, before="--upload-pack=x")).encode()
    assert post_gitea(client, body) == (400, {
        "error": "field 'before' is '--upload-pack=x', expected a 40 or 64 digit hex sha"})
    assert_nothing_stored(settings)


@pytest.mark.parametrize("ref", ["refs/tags/PROD\n", "refs/tags/PR OD", "refs/tags/../PROD",
                                 "refs/tags/PROD.lock", "refs/tags/", "refs/tags/a\x00b",
                                 "refs/tags/PROD~1", "--upload-pack=refs/x"])
def test_a_malformed_ref_is_400(client: FlaskClient, settings: Settings, ref: str) -> None:
    body = json.dumps(gitea_payload(ref, SHA)).encode()
    assert post_gitea(client, body) == (400, {
        "error": f"field 'ref' is {ref!r}, expected a ref like 'refs/tags/NAME'"})
    assert_nothing_stored(settings)


@pytest.mark.parametrize("delivery", ["d-1\n", "--upload-pack=touch /tmp/x", "-d", " d-1",
                                      "d 1", "d\x00", "é", "x" * 129, ""])
def test_a_malformed_delivery_id_is_400(client: FlaskClient, settings: Settings,
                                        delivery: str) -> None:
    body = json.dumps(gitea_payload("refs/tags/PROD", SHA)).encode()
    status, answer = post_gitea(client, body, HTTP_X_GITEA_DELIVERY=delivery)
    shown = delivery if len(delivery) <= 128 else delivery[:128] + "..."
    assert (status, answer) == (400, {"error": f"X-Gitea-Delivery {shown!r} is not a delivery "
                                               "id (letters, digits, '.', '_', ':', '-', not "
                                               "first; at most 128)"})
    assert_nothing_stored(settings)


@pytest.mark.parametrize("event", ["push\n", "--help", "push\r", "", "ev\x7fnt", "x" * 65])
def test_a_malformed_event_is_400(client: FlaskClient, settings: Settings, event: str) -> None:
    body = json.dumps(gitea_payload("refs/tags/PROD", SHA)).encode()
    status, answer = post_gitea(client, body, HTTP_X_GITEA_EVENT=event)
    shown = event if len(event) <= 64 else event[:64] + "..."
    message = ("missing X-Gitea-Event header; Gitea names the event of every delivery there"
               if not event else f"X-Gitea-Event {shown!r} is not an event name (letters, "
               "digits, space, '_', '.', '-'; at most 64)")
    assert (status, answer) == (400, {"error": message})
    assert_nothing_stored(settings)


def test_gitlab_checks_both_delivery_headers(client: FlaskClient, settings: Settings) -> None:
    body = json.dumps({"ref": "refs/tags/PROD", "checkout_sha": SHA}).encode()
    headers = gitlab_headers(body, delivery="good-id")
    response = client.post("/hooks/gitlab", data=body, headers=headers,
                           environ_overrides={"HTTP_IDEMPOTENCY_KEY": "bad\n"})
    assert response.status_code == 400
    assert response.json == {"error": "Idempotency-Key 'bad\\n' is not a delivery id (letters, "
                                      "digits, '.', '_', ':', '-', not first; at most 128)"}
    del headers["X-Gitlab-Event-UUID"]
    response = client.post("/hooks/gitlab", data=body, headers=headers)
    assert (response.status_code, response.json) == (400, {
        "error": "missing X-Gitlab-Event-UUID header; every GitLab delivery carries a unique id"})
    assert_nothing_stored(settings)


def test_an_unknown_forge_is_404_naming_the_receivers(client: FlaskClient,
                                                      settings: Settings) -> None:
    response = client.post("/hooks/bitbucket", data=b"{}",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 404
    assert response.json == {"error": "no receiver for forge 'bitbucket'; POST to /hooks/gitea, "
                                      "/hooks/github or /hooks/gitlab"}
    assert_nothing_stored(settings)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("get", "/hooks/gitea", {"POST", "OPTIONS"}),
    ("put", "/hooks/github", {"POST", "OPTIONS"}),
    ("post", "/runs", {"GET", "HEAD", "OPTIONS"}),
    ("delete", "/runs/1", {"GET", "HEAD", "OPTIONS"}),
    ("post", "/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("patch", "/openapi.json", {"GET", "HEAD", "OPTIONS"}),
])
def test_405_names_the_allowed_methods(client: FlaskClient, method: str, path: str,
                                       allowed: set[str]) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == allowed
    assert response.json == {"error": "The method is not allowed for the requested URL."}


def test_a_content_length_over_the_limit_is_413_before_the_signature(
        client: FlaskClient, settings: Settings) -> None:
    body = b"{}"
    response = client.post("/hooks/gitea", data=body, headers={
        **gitea_headers(body), "X-Gitea-Signature": "0" * 64},
        environ_overrides={"CONTENT_LENGTH": str(1024 * 1024 + 1)})
    assert response.status_code == 413
    assert response.json == {"error": "body is larger than 1048576 bytes; a push event is far "
                                      "smaller, so this is not a push this receiver takes"}
    assert_nothing_stored(settings)
