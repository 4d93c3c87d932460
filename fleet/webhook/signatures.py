"""Who sent this request? One check per forge, every comparison in constant time.

- Gitea: ``X-Gitea-Signature`` is the hex HMAC-SHA256 of the raw body (no prefix).
- GitHub (and Gitea's GitHub-style copy): ``X-Hub-Signature-256: sha256=<hex>``.
- GitLab: ``X-Gitlab-Token`` carries the shared secret itself.

Each check returns ``None`` when the request is authentic, else the refusal message.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol


class Headers(Protocol):
    """What the checks need of request headers (werkzeug's ``Headers`` or a dict)."""

    def get(self, key: str, default: str) -> str: ...


def body_hmac(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with ``secret`` (what Gitea and GitHub send)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_gitea(headers: Headers, body: bytes, secret: str | None) -> str | None:
    """Verify ``X-Gitea-Signature`` against ``FLEET_WEBHOOK_SECRET``."""
    if not secret:
        return _disabled("Gitea", "FLEET_WEBHOOK_SECRET")
    given = headers.get("X-Gitea-Signature", "").strip()
    if not given:
        return ("missing X-Gitea-Signature header; set the webhook's secret in Gitea "
                "to the value of FLEET_WEBHOOK_SECRET")
    if not hmac.compare_digest(given.lower().encode(), body_hmac(secret, body).encode()):
        return ("X-Gitea-Signature does not match the body signed with FLEET_WEBHOOK_SECRET; "
                "make the webhook's secret in Gitea equal FLEET_WEBHOOK_SECRET")
    return None


def check_github(headers: Headers, body: bytes, secret: str | None) -> str | None:
    """Verify ``X-Hub-Signature-256: sha256=<hex>`` against ``FLEET_WEBHOOK_SECRET``."""
    if not secret:
        return _disabled("GitHub", "FLEET_WEBHOOK_SECRET")
    given = headers.get("X-Hub-Signature-256", "").strip()
    if not given:
        return ("missing X-Hub-Signature-256 header; set the webhook's secret on GitHub "
                "to the value of FLEET_WEBHOOK_SECRET")
    expected = "sha256=" + body_hmac(secret, body)
    if not hmac.compare_digest(given.lower().encode(), expected.encode()):
        return ("X-Hub-Signature-256 does not match the body signed with FLEET_WEBHOOK_SECRET; "
                "make the webhook's secret on GitHub equal FLEET_WEBHOOK_SECRET")
    return None


def check_gitlab(headers: Headers, body: bytes, token: str | None) -> str | None:
    """Compare ``X-Gitlab-Token`` with ``FLEET_GITLAB_TOKEN`` (GitLab signs nothing)."""
    if not token:
        return _disabled("GitLab", "FLEET_GITLAB_TOKEN")
    given = headers.get("X-Gitlab-Token", "")
    if not given:
        return ("missing X-Gitlab-Token header; set the webhook's secret token in GitLab "
                "to the value of FLEET_GITLAB_TOKEN")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return ("X-Gitlab-Token does not match FLEET_GITLAB_TOKEN; "
                "make the webhook's secret token in GitLab equal FLEET_GITLAB_TOKEN")
    return None


def _disabled(forge: str, variable: str) -> str:
    """The refusal of a receiver whose secret is not configured."""
    return f"the {forge} receiver is disabled because {variable} is not set; set it to enable it"
