"""The receivers: ``POST /hooks/gitea``, ``/hooks/github`` and ``/hooks/gitlab``.

Checks run in this order, each refusal a JSON ``{"error": ...}`` and no run:
413 body over 1 MiB, 415 not ``application/json``, 401 bad or missing signature/token,
400 missing event or delivery header or malformed JSON, 409 delivery id already seen.

Events other than a push (GitHub's ``ping``, issues, ...) answer **202 ignored**, not 400:
they are authentic, well-formed deliveries the forge was configured to send, and a 4xx makes
the forge flag the hook as failing (GitLab disables hooks that keep failing). Only a request
that names no event at all is malformed (400). Pushes of branches, of other tags and tag
deletions are also 202 ignored, with the reason. A matching tag push answers 202 with the id of
the queued run; the deploy runs in the background.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from fleet.webhook import dispatcher, signatures
from fleet.webhook.config import Settings
from fleet.webhook.db import get_db
from fleet.webhook.push import PayloadError, ignore_reason, parse_push
from fleet.webhook.queue import ReplayError, enqueue, record_ignored

bp = Blueprint("hooks", __name__, url_prefix="/hooks")


@dataclass(frozen=True)
class Forge:
    """How one forge names its headers and which of its events carry a push."""

    name: str
    event_header: str
    delivery_headers: tuple[str, ...]
    push_events: tuple[str, ...]
    check: Callable[[signatures.Headers, bytes, str | None], str | None]
    secret: Callable[[Settings], str | None]


FORGES = {
    "gitea": Forge("Gitea", "X-Gitea-Event", ("X-Gitea-Delivery",), ("push",),
                   signatures.check_gitea, lambda settings: settings.webhook_secret),
    "github": Forge("GitHub", "X-GitHub-Event", ("X-GitHub-Delivery",), ("push",),
                    signatures.check_github, lambda settings: settings.webhook_secret),
    # GitLab's Idempotency-Key stays the same across retries of one event; older GitLab
    # versions only send X-Gitlab-Event-UUID.
    "gitlab": Forge("GitLab", "X-Gitlab-Event", ("Idempotency-Key", "X-Gitlab-Event-UUID"),
                    ("Tag Push Hook", "Push Hook", "System Hook"),
                    signatures.check_gitlab, lambda settings: settings.gitlab_token),
}


def refuse(status: int, message: str) -> tuple[Response, int]:
    """A JSON refusal."""
    return jsonify(error=message), status


@bp.post("/<any(gitea, github, gitlab):forge>")
def receive(forge: str) -> tuple[Response, int]:
    """Check one delivery and queue a deploy when it is a push of the deploy tag."""
    spec = FORGES[forge]
    settings: Settings = current_app.config["SETTINGS"]
    body = request.get_data(cache=False)
    if request.mimetype != "application/json":
        return refuse(415, f"Content-Type {request.mimetype or '(none)'!r} is not supported; "
                           f"configure the {spec.name} webhook to send application/json")
    problem = spec.check(request.headers, body, spec.secret(settings))
    if problem:
        return refuse(401, problem)
    event = request.headers.get(spec.event_header, "").strip()
    if not event:
        return refuse(400, f"missing {spec.event_header} header; {spec.name} names the event "
                           "of every delivery there")
    delivery_id = next((request.headers[h].strip() for h in spec.delivery_headers
                        if request.headers.get(h, "").strip()), "")
    if not delivery_id:
        return refuse(400, f"missing {spec.delivery_headers[-1]} header; every {spec.name} "
                           "delivery carries a unique id")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return refuse(400, f"body is not valid JSON: {exc}")
    try:
        return _handle(forge, spec, settings, event, delivery_id, payload)
    except PayloadError as exc:
        return refuse(400, str(exc))
    except ReplayError as exc:
        return refuse(409, str(exc))


def _handle(forge: str, spec: Forge, settings: Settings, event: str, delivery_id: str,
            payload: Any) -> tuple[Response, int]:
    """Queue a run for a push of the deploy tag; record anything else as ignored."""
    reason = _event_reason(spec, event, payload)
    if reason is None:
        push = parse_push(forge, delivery_id, event, payload)
        reason = ignore_reason(push, settings.deploy_tag)
        if reason is None:
            run_id = enqueue(get_db(), push)
            dispatcher.kick()
            return jsonify(status="queued", run_id=run_id, delivery=delivery_id, tag=push.tag,
                           sha=push.sha, run=url_for("api.show_run", run_id=run_id)), 202
    record_ignored(get_db(), forge, delivery_id, event, reason)
    return jsonify(status="ignored", reason=reason, delivery=delivery_id), 202


def _event_reason(spec: Forge, event: str, payload: Any) -> str | None:
    """Why an event is not a push at all (``None`` when it is one)."""
    if event not in spec.push_events:
        return (f"{spec.name} event {event!r} does not deploy; only {spec.push_events[0]!r} "
                "events of the deploy tag do")
    if event == "System Hook":
        kind = payload.get("event_name") if isinstance(payload, dict) else None
        if kind not in ("push", "tag_push"):
            return f"GitLab system hook event {kind!r} does not deploy; only tag_push does"
    return None
