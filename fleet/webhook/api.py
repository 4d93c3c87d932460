"""The read API: ``GET /runs``, ``GET /runs/<id>``, ``GET /drift-checks`` and ``GET /healthz``.

Every endpoint wants ``Authorization: Bearer <FLEET_READ_TOKEN>``: run records name pushers,
hosts and deploy logs.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, abort, current_app, jsonify, request

from fleet.core.errors import WebhookError
from fleet.webhook.db import get_db
from fleet.webhook.driftcheck import recent
from fleet.webhook.queue import STATUSES, queue_depth
from fleet.webhook.records import get_run, page_runs, run_to_dict

bp = Blueprint("api", __name__)
MAX_LIMIT = 500
MAX_RUN_ID = 2**63 - 1  # SQLite's largest INTEGER
View = TypeVar("View", bound=Callable[..., Any])


def clip(value: str, width: int = 40) -> str:
    """``value`` shortened for an error message (``...`` marks a cut)."""
    return value if len(value) <= width else value[:width] + "..."


def number(name: str, raw: str, low: int, high: int) -> int:
    """``raw`` as a whole number from ``low`` to ``high``, else a 400 naming ``name``.

    Only ASCII digits count (``str.isdigit`` would take ``²``, which ``int`` refuses), and
    the length is bounded before ``int`` sees the value.
    """
    if re.fullmatch(r"[0-9]+", raw) and len(raw) <= len(str(high)) and low <= int(raw) <= high:
        return int(raw)
    abort(400, f"{name} {clip(raw)!r} is not a number from {low} to {high}")


def has_read_token() -> bool:
    """True when the request carries the read token: ``Bearer TOKEN``, or HTTP Basic with the
    token as password (so a browser can open the dashboard)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    expected = current_app.config["SETTINGS"].read_token.encode()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), expected)
    if scheme.lower() == "basic" and request.authorization is not None:
        password = (request.authorization.password or "").encode()
        return hmac.compare_digest(password, expected)
    return False


def read_token_required(view: View) -> View:
    """Refuse with 401 unless the request carries the read token."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        """Check the bearer token, then call the view."""
        if not has_read_token():
            response = jsonify(error="missing or wrong read token; send "
                                     "'Authorization: Bearer <FLEET_READ_TOKEN>'")
            response.headers["WWW-Authenticate"] = 'Bearer realm="fleet-webhook"'
            return response, 401
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


@bp.get("/runs")
@read_token_required
def index() -> Any:
    """The newest runs first; ``?limit=N`` (1-500, default 50) and ``?status=S`` filter, and
    ``?before=ID`` pages: the runs older than run ``ID`` (``next_before`` of the page before;
    null on the last page)."""
    limit = number("limit", request.args.get("limit", "50"), 1, MAX_LIMIT)
    status = request.args.get("status")
    if status is not None and status not in STATUSES:  # ?status= (empty) is no status either
        abort(400, f"status {clip(status)!r} is not one of {', '.join(STATUSES)}")
    raw_before = request.args.get("before")
    before = None if raw_before is None else number("before", raw_before, 1, MAX_RUN_ID)
    runs, next_before = page_runs(get_db(), limit=limit, status=status, before=before)
    return jsonify(runs=runs, next_before=next_before)


@bp.get("/runs/<run_id>")
@read_token_required
def show_run(run_id: str) -> Any:
    """One run with its per-host results, health and the tail of its log."""
    number_id = number("run_id", run_id, 1, MAX_RUN_ID)
    try:
        return jsonify(get_run(get_db(), number_id))
    except WebhookError as exc:
        abort(404, str(exc))


@bp.get("/drift-checks")
@read_token_required
def drift_checks() -> Any:
    """The scheduled drift checks, newest first; ``?limit=N`` (1-500, default 20)."""
    limit = number("limit", request.args.get("limit", "20"), 1, MAX_LIMIT)
    return jsonify(checks=recent(get_db(), limit))


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
