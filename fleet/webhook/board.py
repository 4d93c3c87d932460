"""The fleet dashboard on the receiver (``/dashboard/``): the receiver's runs with their
masked logs and its scheduled drift checks, behind the read token (``Bearer``, or HTTP Basic
with the token as password: a browser asks for it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flask import Flask, abort, jsonify

from fleet import dashboard
from fleet.dashboard.data import CheckView, Dashboard, HostRun, RunView
from fleet.webhook.api import has_read_token
from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from fleet.webhook.driftcheck import recent
from fleet.webhook.records import list_runs, read_log_tail

T = TypeVar("T")
RUNS_SHOWN = 10
CHECKS_SHOWN = 10


def registry_path(settings: Settings) -> Path:
    """The registry the receiver deploys: ``FLEET_REGISTRY``, else the work dir's."""
    return Path(settings.deploy_env().get("FLEET_REGISTRY")
                or settings.state_dir / "work" / "registry.yaml")


def run_views(conn: sqlite3.Connection) -> list[RunView]:
    """The newest runs as dashboard rows (per host: status, changed operations, reason)."""
    return [RunView(
        run_id=str(run["id"]), kind="deploy", status=run["status"], dry=False,
        release=run["release"], started=run["started_at"] or run["queued_at"],
        finished=run["ended_at"], summary=run["summary"] or "", has_log=bool(run["log_path"]),
        hosts=tuple(HostRun(name=name, status=str(entry.get("status", "?")),
                            release=entry.get("release"),
                            changed=tuple(entry.get("changed") or ()),
                            reason=str(entry.get("reason") or ""))
                    for name, entry in run["hosts"].items() if isinstance(entry, dict)))
            for run in list_runs(conn, limit=RUNS_SHOWN)]


def check_views(conn: sqlite3.Connection) -> list[CheckView]:
    """The newest drift checks as dashboard rows."""
    return [CheckView(check_id=check["id"], status=check["status"],
                      started=check["started_at"], drifted=tuple(check["drifted"]),
                      summary=check["summary"], alert=check["alert"])
            for check in recent(conn, CHECKS_SHOWN)]


def run_column(settings: Settings, run_id: str, column: str) -> str | None:
    """Column ``column`` of the receiver's run ``run_id`` (None: no such run, or empty)."""
    if not run_id.isascii() or not run_id.isdigit() or len(run_id) > 18:
        return None
    conn = connect(settings.db_path)
    try:
        row = conn.execute(f"SELECT {column} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
    finally:
        conn.close()
    return row[column] if row is not None and row[column] else None


def log_of(settings: Settings, run_id: str) -> str | None:
    """The masked log of run ``run_id`` (None when there is no such run or log)."""
    path = run_column(settings, run_id, "log_path")
    return read_log_tail(path) if path else None


def record_of(settings: Settings, run_id: str) -> Path | None:
    """The fleet run record the deploy of run ``run_id`` wrote (None when it wrote none): the
    receiver's run id keys the record as it keys the log."""
    path = run_column(settings, run_id, "record_path")
    return Path(path) if path else None


def with_db(settings: Settings, read: Callable[[sqlite3.Connection], T]) -> T:
    """``read(conn)`` on a connection of its own (the dashboard reads from its refresh)."""
    conn = connect(settings.db_path)
    try:
        return read(conn)
    finally:
        conn.close()


def require_read_token() -> None:
    """Refuse with 401 (asking the browser for the token) unless the request carries it."""
    if not has_read_token():
        response = jsonify(error="the dashboard wants the read token: 'Authorization: Bearer "
                                 "<FLEET_READ_TOKEN>', or any user name and the token as "
                                 "password")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="fleet dashboard"'
        abort(response)


def init_app(app: Flask) -> None:
    """Mount the dashboard on the receiver."""
    settings: Settings = app.config["SETTINGS"]
    source = Dashboard(
        registry_path(settings), settings.state_dir / "records",
        runs=lambda: with_db(settings, run_views),
        checks=lambda: with_db(settings, check_views),
        logs=lambda run_id: log_of(settings, run_id),
        records=lambda run_id: record_of(settings, run_id))
    dashboard.init_app(app, source, auth=require_read_token)

