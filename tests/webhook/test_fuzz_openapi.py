"""Fuzz the receiver from its own ``/openapi.json`` with schemathesis.

Every documented operation gets generated requests (valid and invalid data, missing headers,
undocumented methods); each answer must be documented (status code, content type, schema)
and none may be a server error. Hook deliveries are signed with the test secret, so the
generated payloads reach the JSON and push parsing, not only the signature check.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from fleet.webhook.signatures import body_hmac
from tests.webhook.forge import GITLAB_TOKEN, READ_TOKEN, SECRET, signed_push

pytestmark = pytest.mark.slow


@pytest.fixture
def api_schema(app: Flask) -> Any:
    """The receiver's OpenAPI document, loaded from the app it describes, with three queued
    runs (ids 1-3) so that the read API's answers hold runs to check against the schema."""
    client = app.test_client()
    for forge in ("gitea", "github", "gitlab"):
        body, headers = signed_push(forge, "refs/tags/PROD", "1f" * 20)
        assert client.post(f"/hooks/{forge}", data=body, headers=headers).status_code == 202
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")
DELIVERY_HEADERS = {"X-Gitea-Delivery", "X-GitHub-Delivery", "X-Gitlab-Event-UUID",
                    "Idempotency-Key"}
DELIVERIES = itertools.count(1)


@schemathesis.auth().apply_to(path_regex="^/(runs|healthz)")
class ReadToken:
    """The read API's bearer token (schemathesis leaves it out where a check needs that)."""

    def get(self, case: Any, context: Any) -> str:
        """The token."""
        return READ_TOKEN

    def set(self, case: Any, data: str, context: Any) -> None:
        """Send it as ``Authorization: Bearer``."""
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def signed(case: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers that authenticate ``case`` and the body to send (the bytes that were signed)."""
    path = case.formatted_path
    headers: dict[str, str] = {}
    if not path.startswith("/hooks/"):
        return headers, {}
    kwargs = case.as_transport_kwargs()
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
    elif isinstance(kwargs.get("data"), bytes | str):
        data = kwargs["data"]
        body = data.encode() if isinstance(data, str) else data
    else:
        return headers, {}
    if path == "/hooks/gitlab":
        headers["X-Gitlab-Token"] = GITLAB_TOKEN
    else:
        signature = body_hmac(SECRET, body)
        headers["X-Gitea-Signature"] = signature
        headers["X-Hub-Signature-256"] = f"sha256={signature}"
    # A header the generator left out or broke on purpose (not matching its documented
    # pattern) stays as generated: the checks expect a 4xx. A valid one gets the right value,
    # so the body goes on to the JSON and push checks.
    patterns = {parameter.name: parameter.definition["schema"]["pattern"]
                for parameter in case.operation.headers}
    generated = case.headers or {}
    valid = {name for name, value in generated.items()
             if isinstance(value, str) and name in patterns and re.search(patterns[name], value)}
    # valid delivery ids made unique, so that deliveries get past the replay check (409)
    for name in valid & DELIVERY_HEADERS:
        headers[name] = f"{generated[name][:100]}-{next(DELIVERIES)}"
    return {name: value for name, value in headers.items() if name in valid}, {"data": body}


@schema.parametrize()
@settings(max_examples=100, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_server_error(case: Any) -> None:
    headers, body = signed(case)
    case.call_and_validate(headers=headers, **body)
