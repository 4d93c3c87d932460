"""The fleet dashboard: one server-rendered page of every agent's health, release, soul and
config state, bus backlog, and the latest runs; it refreshes its live part every few seconds
without a reload (a few lines of JavaScript, no build step, nothing loaded from elsewhere).

Mounted by the webhook receiver behind its read token, and served locally by
``fleet dashboard``. ``init_app(app, dashboard, auth=None)``: ``auth`` is called before every
request and may abort (the receiver checks its read token there).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Flask, current_app, jsonify, render_template
from flask.typing import ResponseReturnValue

from fleet.control.records import RUN_ID_RE
from fleet.dashboard.data import Dashboard, as_json

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
               static_folder="static")
EXTENSION = "fleet.dashboard"
Auth = Callable[[], None]


def dashboard() -> Dashboard:
    """This app's dashboard data source."""
    source: Dashboard = current_app.extensions[EXTENSION]["source"]
    return source


@bp.before_request
def check_access() -> None:
    """Run the app's access check (if any) before every dashboard request."""
    auth: Auth | None = current_app.extensions[EXTENSION]["auth"]
    if auth is not None:
        auth()


@bp.get("/")
def page() -> ResponseReturnValue:
    """The whole page."""
    source = dashboard()
    return render_template("dashboard/page.html", snap=source.snapshot(),
                           refresh_s=source.refresh_s)


@bp.get("/live")
def live() -> ResponseReturnValue:
    """The live part of the page (agents and runs), fetched by the page's refresh."""
    response = current_app.make_response(
        render_template("dashboard/live.html", snap=dashboard().snapshot()))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/state.json")
def state() -> ResponseReturnValue:
    """The same data as JSON."""
    return jsonify(as_json(dashboard().snapshot()))


@bp.get("/runs/<run_id>.json")
def run_record(run_id: str) -> ResponseReturnValue:
    """One run record (secrets were masked when it was written); on the receiver, ``run_id``
    is its own run id, as for the log."""
    source = dashboard()
    if source.records is not None:
        found = source.records(run_id)
        if found is None or not found.is_file():
            return jsonify({"error": f"run {run_id!r} has no run record here"}), 404
        return current_app.response_class(found.read_bytes(), mimetype="application/json")
    if not RUN_ID_RE.fullmatch(run_id):
        return jsonify({"error": f"run id {run_id!r} is not valid"}), 400
    path = source.records_dir / f"{run_id}.json"
    if not path.is_file():
        return jsonify({"error": f"run {run_id} doesn't exist"}), 404
    return current_app.response_class(path.read_bytes(), mimetype="application/json")


@bp.get("/runs/<run_id>/log")
def run_log(run_id: str) -> ResponseReturnValue:
    """A run's masked log (the receiver's runs), as plain text; elsewhere no run has one."""
    source = dashboard()
    if source.logs is None and not RUN_ID_RE.fullmatch(run_id):
        return jsonify({"error": f"run id {run_id!r} is not valid"}), 400
    text = source.logs(run_id) if source.logs is not None else None
    if text is None:
        return jsonify({"error": f"run {run_id!r} has no log here"}), 404
    return current_app.response_class(text, mimetype="text/plain")


def init_app(app: Flask, source: Dashboard, auth: Auth | None = None) -> None:
    """Mount the dashboard on ``app`` with its data source and access check."""
    app.extensions[EXTENSION] = {"source": source, "auth": auth}
    app.register_blueprint(bp)
