"""The receivers: ``POST /hooks/gitea``, ``/hooks/github`` and ``/hooks/gitlab``.

Checks run in this order, each refusal a JSON ``{"error": ...}`` and no run:
404 unknown forge, 413 body over 1 MiB (``Content-Length`` before anything is read, a chunked
body after at most 1 MiB + 1 byte), 415 not ``application/json``, 401 bad or missing
signature/token, 400 missing or malformed event or delivery header, a body that is not one
JSON object (invalid UTF-8, lone surrogates, ``NaN``, nesting too deep) or not a push,
409 delivery id already seen.

Events other than a push (GitHub's ``ping``, issues, ...) answer **202 ignored**, not 400:
they are authentic, well-formed deliveries the forge was configured to send, and a 4xx makes
the forge flag the hook as failing (GitLab disables hooks that keep failing). Only a request
that names no event at all is malformed (400). Pushes of branches, of other tags and tag
deletions are also 202 ignored, with the reason. A matching tag push answers 202 with the id of
the queued run; the deploy runs in the background.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from fleet.webhook import dispatcher, signatures
from fleet.webhook.api import clip
from fleet.webhook.config import Settings
from fleet.webhook.db import get_db
from fleet.webhook.push import PayloadError, ignore_reason, parse_push, read_payload
from fleet.webhook.queue import ReplayError, enqueue, record_ignored

bp = Blueprint("hooks", __name__, url_prefix="/hooks")
MAX_BODY_BYTES = 1024 * 1024  # a push event is far smaller
# Header values are matched whole (fullmatch, no strip): a trailing newline, a leading "-"
# or a control character makes them malformed, and they are never stored.
EVENT_RE = re.compile(r"[A-Za-z][A-Za-z0-9 _.-]{0,63}")
DELIVERY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


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
    # versions only send X-Gitlab-Event-UUID. The last header named is required.
    "gitlab": Forge("GitLab", "X-Gitlab-Event", ("Idempotency-Key", "X-Gitlab-Event-UUID"),
                    ("Tag Push Hook", "Push Hook", "System Hook"),
                    signatures.check_gitlab, lambda settings: settings.gitlab_token),
}


def refuse(status: int, message: str) -> tuple[Response, int]:
    """A JSON refusal."""
    return jsonify(error=message), status


@bp.post("/<forge>")
def receive(forge: str) -> tuple[Response, int]:
    """Check one delivery and queue a deploy when it is a push of the deploy tag."""
    spec = FORGES.get(forge)
    if spec is None:
        return refuse(404, f"no receiver for forge {clip(forge)!r}; POST to /hooks/gitea, "
                           "/hooks/github or /hooks/gitlab")
    settings: Settings = current_app.config["SETTINGS"]
    body = read_body(MAX_BODY_BYTES)
    if request.mimetype != "application/json":
        return refuse(415, f"Content-Type {request.mimetype or '(none)'!r} is not supported; "
                           f"configure the {spec.name} webhook to send application/json")
    problem = spec.check(request.headers, body, spec.secret(settings))
    if problem:
        return refuse(401, problem)
    event = request.headers.get(spec.event_header, "")
    if not event:
        return refuse(400, f"missing {spec.event_header} header; {spec.name} names the event "
                           "of every delivery there")
    if not EVENT_RE.fullmatch(event):
        return refuse(400, f"{spec.event_header} {clip(event, 64)!r} is not an event name "
                           "(letters, digits, space, '_', '.', '-'; at most 64)")
    if spec.delivery_headers[-1] not in request.headers:
        return refuse(400, f"missing {spec.delivery_headers[-1]} header; every {spec.name} "
                           "delivery carries a unique id")
    sent = [(name, request.headers[name]) for name in spec.delivery_headers
            if name in request.headers]
    for name, value in sent:
        if not DELIVERY_RE.fullmatch(value):
            return refuse(400, f"{name} {clip(value, 128)!r} is not a delivery id (letters, "
                               "digits, '.', '_', ':', '-', not first; at most 128)")
    delivery_id = sent[0][1]
    try:
        payload = read_payload(body)
        return _handle(forge, spec, settings, event, delivery_id, payload)
    except PayloadError as exc:
        return refuse(400, str(exc))
    except ReplayError as exc:
        return refuse(409, str(exc))


def read_body(limit: int) -> bytes:
    """The request body; :class:`RequestEntityTooLarge` (413) when it is over ``limit`` bytes.

    ``Content-Length`` is checked before anything is read; a chunked body is read up to
    ``limit + 1`` bytes, so neither kind is buffered beyond the limit or verified.
    """
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = request.stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


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
