"""The SQLite store of deliveries and runs: one file under ``FLEET_STATE_DIR``.

Request handlers use :func:`get_db` (one connection per request, cached on ``g``); the
dispatcher and the CLI open their own with :func:`connect`. WAL mode lets readers work while
a run is being recorded; writers take ``BEGIN IMMEDIATE`` transactions. A database of schema
version 1 (statuses ``success``, no release or stages) is rebuilt on first open; version 2
gets the ``drift_checks`` table; versions 2 and 3 get the ``rollback_from`` column.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

import click
from flask import Flask, current_app, g

from bus.sqlite import immediate, open_db, use_wal
from fleet.core.errors import WebhookError

SCHEMA_VERSION = 4
V1_COLUMNS = ("id, delivery_id, forge, tag, sha, before_sha, pusher, repository, superseded_by, "
              "queued_at, started_at, ended_at, exit_status, worker_pid, commit_sha, log_path, "
              "summary, hosts, health")


def connect(path: str | Path, create: bool = True) -> sqlite3.Connection:
    """Open the database at ``path`` in autocommit mode, creating the schema if asked."""
    db_path = Path(path)
    if not create and not db_path.exists():
        raise WebhookError(f"{db_path}: no webhook database here",
                           hint="Point FLEET_STATE_DIR (or --state-dir) at the receiver's state "
                                "dir, or read through the HTTP API with --url.")
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conn = open_db(db_path)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        if create:
            use_wal(conn)
            create_schema(conn)
    except BaseException:  # e.g. a locked or corrupt file: no connection left behind
        conn.close()
        raise
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older schema up to date (a version 1 ``runs`` table is
    rebuilt, ``success`` becoming ``ok``), in one transaction; a no-op when it is current."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    text = resources.files(__package__).joinpath("schema.sql").read_text()
    statements = [part for part in text.split(";") if part.strip(" \n-")]
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA legacy_alter_table = ON")  # leave deliveries' reference to runs be
    try:
        with immediate(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return  # another process did it meanwhile
            # compatibility: until 0.3.0: receiver schemas 1 to 3
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            old = version < 2 and conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
            ).fetchone() is not None  # version 1: rebuild runs; version 2: add drift_checks
            if old:
                conn.execute("DROP INDEX IF EXISTS runs_by_status")
                conn.execute("ALTER TABLE runs RENAME TO runs_v1")
            for statement in statements:
                conn.execute(statement)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
            if "rollback_from" not in columns:  # versions 2 and 3
                conn.execute("ALTER TABLE runs ADD COLUMN rollback_from TEXT")
            if old:
                conn.execute(f"INSERT INTO runs ({V1_COLUMNS}, status) SELECT {V1_COLUMNS}, "
                             "CASE status WHEN 'success' THEN 'ok' ELSE status END FROM runs_v1")
                conn.execute("DROP TABLE runs_v1")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        conn.execute("PRAGMA legacy_alter_table = OFF")
        conn.execute("PRAGMA foreign_keys = ON")


def get_db() -> sqlite3.Connection:
    """The request's connection, opened on first use."""
    if "webhook_db" not in g:
        g.webhook_db = connect(current_app.config["SETTINGS"].db_path, create=False)
    conn: sqlite3.Connection = g.webhook_db
    return conn


def close_db(_exc: BaseException | None = None) -> None:
    """Close the request's connection (teardown hook)."""
    conn = g.pop("webhook_db", None)
    if conn is not None:
        conn.close()


@click.command("init-db")
def init_db_command() -> None:
    """Create the webhook database and its tables if missing."""
    settings = current_app.config["SETTINGS"]
    connect(settings.db_path).close()
    click.echo(f"Initialized {settings.db_path}")


def init_app(app: Flask) -> None:
    """Create the schema once at start-up and register teardown and the CLI command."""
    connect(app.config["SETTINGS"].db_path).close()
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)
