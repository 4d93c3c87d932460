"""A mock forge: push payloads and headers exactly as Gitea, GitHub and GitLab send them."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

ZERO = "0" * 40
SECRET = "test-webhook-secret-0123456789"
GITLAB_TOKEN = "test-gitlab-token-0123456789"
READ_TOKEN = "test-read-token-0123456789"


def gitea_payload(ref: str, after: str, before: str = ZERO) -> dict[str, Any]:
    """A Gitea ``push`` payload (fields of Gitea's ``api.PushPayload``)."""
    owner = {"id": 1, "login": "alice", "full_name": "Alice", "email": "alice@example.org",
             "username": "alice"}
    return {"ref": ref, "before": before, "after": after,
            "compare_url": f"http://gitea.example.org/ops/fleet/compare/{before}...{after}",
            "commits": [], "total_commits": 0, "head_commit": None,
            "repository": {"id": 7, "owner": owner, "name": "fleet", "full_name": "ops/fleet",
                           "clone_url": "http://gitea.example.org/ops/fleet.git"},
            "pusher": owner, "sender": owner}


def github_payload(ref: str, after: str, before: str = ZERO) -> dict[str, Any]:
    """A GitHub ``push`` payload."""
    return {"ref": ref, "before": before, "after": after, "base_ref": None,
            "created": before == ZERO, "deleted": after == ZERO,
            "forced": before != ZERO and after != ZERO, "commits": [], "head_commit": None,
            "compare": "https://github.com/ops/fleet/compare/x",
            "pusher": {"name": "bob", "email": "bob@example.org"},
            "repository": {"full_name": "ops/fleet", "name": "fleet"},
            "sender": {"login": "bob"}}


def gitlab_payload(ref: str, after: str, before: str = ZERO) -> dict[str, Any]:
    """A GitLab ``tag_push`` payload (``checkout_sha`` is null when the tag is deleted)."""
    return {"object_kind": "tag_push", "event_name": "tag_push", "before": before,
            "after": after, "ref": ref, "ref_protected": False,
            "checkout_sha": None if after == ZERO else after, "user_id": 3,
            "user_name": "Carol", "user_username": "carol", "user_email": "",
            "project_id": 15, "project": {"id": 15, "name": "fleet",
                                          "path_with_namespace": "ops/fleet"},
            "commits": [], "total_commits_count": 0, "push_options": {},
            "repository": {"name": "fleet"}}


def gitea_headers(body: bytes, event: str = "push", delivery: str | None = None,
                  secret: str = SECRET) -> dict[str, str]:
    """The headers Gitea sends, signature included (also its GitHub/Gogs-style copies)."""
    delivery = delivery or str(uuid.uuid4())
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1",
            "X-Gitea-Delivery": delivery, "X-Gitea-Event": event, "X-Gitea-Event-Type": event,
            "X-Gitea-Signature": signature, "X-Gogs-Delivery": delivery, "X-Gogs-Event": event,
            "X-Gogs-Event-Type": event, "X-Gogs-Signature": signature,
            "X-Hub-Signature": f"sha1={sha1}", "X-Hub-Signature-256": f"sha256={signature}",
            "X-GitHub-Delivery": delivery, "X-GitHub-Event": event,
            "X-GitHub-Event-Type": event}


def github_headers(body: bytes, event: str = "push", delivery: str | None = None,
                   secret: str = SECRET) -> dict[str, str]:
    """The headers GitHub sends."""
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/abc1234",
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "X-GitHub-Event": event,
            "X-GitHub-Hook-ID": "42", "X-Hub-Signature-256": f"sha256={signature}"}


def gitlab_headers(body: bytes, event: str = "Tag Push Hook", delivery: str | None = None,
                   token: str = GITLAB_TOKEN) -> dict[str, str]:
    """The headers GitLab sends (the token in plain text; it signs nothing)."""
    delivery = delivery or str(uuid.uuid4())
    return {"Content-Type": "application/json", "User-Agent": "GitLab/17.5.0",
            "X-Gitlab-Event": event, "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Webhook-UUID": str(uuid.uuid4()), "Idempotency-Key": delivery,
            "X-Gitlab-Instance": "https://gitlab.example.org", "X-Gitlab-Token": token}


PAYLOADS = {"gitea": gitea_payload, "github": github_payload, "gitlab": gitlab_payload}
HEADERS = {"gitea": gitea_headers, "github": github_headers, "gitlab": gitlab_headers}


def signed_push(forge: str, ref: str, after: str, before: str = ZERO,
                delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one push delivery of ``forge``, signed as the forge signs it."""
    body = json.dumps(PAYLOADS[forge](ref, after, before), indent=2).encode()
    return body, HEADERS[forge](body, delivery=delivery)
