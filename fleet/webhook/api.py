"""The read API: ``GET /runs``, ``GET /runs/<id>`` and ``GET /healthz``.

Every endpoint wants ``Authorization: Bearer <FLEET_READ_TOKEN>``: run records name pushers,
hosts and deploy logs.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, abort, current_app, jsonify, request

from fleet.errors import WebhookError
from fleet.webhook.db import get_db
from fleet.webhook.queue import queue_depth
from fleet.webhook.records import get_run, list_runs, run_to_dict

bp = Blueprint("api", __name__)
STATUSES = ("queued", "running", "success", "failed", "unhealthy", "superseded", "interrupted")
View = TypeVar("View", bound=Callable[..., Any])


def read_token_required(view: View) -> View:
    """Refuse with 401 unless the request carries the read token."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        """Check the bearer token, then call the view."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = current_app.config["SETTINGS"].read_token
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  expected.encode()):
            response = jsonify(error="missing or wrong read token; send "
                                     "'Authorization: Bearer <FLEET_READ_TOKEN>'")
            response.headers["WWW-Authenticate"] = 'Bearer realm="fleet-webhook"'
            return response, 401
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


@bp.get("/runs")
@read_token_required
def index() -> Any:
    """The newest runs first; ``?limit=N`` (1-500, default 50) and ``?status=S`` filter."""
    raw_limit = request.args.get("limit", "50")
    limit = int(raw_limit) if raw_limit.isdigit() else 0
    if not 1 <= limit <= 500:
        abort(400, f"limit {raw_limit!r} is not a number from 1 to 500")
    status = request.args.get("status")
    if status and status not in STATUSES:
        abort(400, f"status {status!r} is not one of {', '.join(STATUSES)}")
    return jsonify(runs=list_runs(get_db(), limit=limit, status=status))


@bp.get("/runs/<int:run_id>")
@read_token_required
def show_run(run_id: int) -> Any:
    """One run with its per-host results, health and the tail of its log."""
    try:
        return jsonify(get_run(get_db(), run_id))
    except WebhookError as exc:
        abort(404, str(exc))


@bp.get("/healthz")
@read_token_required
def healthz() -> Any:
    """Is the receiver up, its database readable, and what is it doing?"""
    conn = get_db()
    running = [run_to_dict(row) for row in
               conn.execute("SELECT * FROM runs WHERE status = 'running'").fetchall()]
    last = conn.execute("SELECT * FROM runs WHERE status NOT IN ('queued', 'running')"
                        " ORDER BY id DESC LIMIT 1").fetchone()
    return jsonify(status="ok", deploy_tag=current_app.config["SETTINGS"].deploy_tag,
                   queued=queue_depth(conn), running=[run["id"] for run in running],
                   last_run=run_to_dict(last) if last is not None else None)
