"""The inter-agent message bus: durable, signed, brokerless.

Each agent's gateway receives messages into its own SQLite store (``<STATE_DIR>/
bus.sqlite3``) and delivers its outbox with a background worker. ``init_app(app)`` mounts
it all on a gateway built by :func:`fleet.gateway.create_app`.

Endpoints and who may call them:

- ``POST /message`` -- any fleet agent, signed with its own key (see :mod:`bus.signing`).
- ``GET /messages``, ``POST /messages/<id>/ack``, ``POST /outbox``, ``GET /bus/stats``,
  ``GET /bus/dead-letters`` -- signed with this agent's own key only (its runtime, or the
  operator who holds every key).
- ``GET /metrics``, ``GET /openapi.json`` -- public (counts and schema, no content).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from bus import db, inbox, openapi, receive, stats, web
from bus import send as sending
from bus.send import send
from bus.worker import DeliveryWorker, Settings

__all__ = ["init_app", "send"]
BLUEPRINTS = (receive.bp, inbox.bp, sending.bp, stats.bp, openapi.bp)
SETTINGS: dict[str, Any] = {  # app setting -> (environment variable, type)
    "BUS_MAX_ATTEMPTS": ("FLEET_BUS_MAX_ATTEMPTS", int),
    "BUS_RETRY_BASE": ("FLEET_BUS_RETRY_BASE", float),
    "BUS_RETRY_MAX": ("FLEET_BUS_RETRY_MAX", float),
    "BUS_LEASE_SECONDS": ("FLEET_BUS_LEASE_SECONDS", float),
    "BUS_DELIVERY_THREADS": ("FLEET_BUS_DELIVERY_THREADS", int),
    "BUS_POLL_SECONDS": ("FLEET_BUS_POLL_SECONDS", float),
    "BUS_RETENTION_DAYS": ("FLEET_BUS_RETENTION_DAYS", float),
}


def settings(app: Flask) -> Settings:
    """Delivery settings: app config, else ``FLEET_BUS_*`` environment, else defaults."""
    fields = dict(zip(SETTINGS, ("max_attempts", "retry_base", "retry_max", "lease_seconds",
                                 "threads", "poll_seconds", "retention_days"), strict=True))
    values: dict[str, Any] = {}
    for name, (env, kind) in SETTINGS.items():
        value = app.config.get(name, os.environ.get(env))
        if value is not None:
            values[fields[name]] = kind(value)
    return Settings(**values)


def init_app(app: Flask) -> None:
    """Create the store, mount the bus blueprints and start the delivery worker.

    ``BUS_WORKER`` (``FLEET_BUS_WORKER``, default on) can turn the worker off, e.g. for
    unit tests with the Flask test client.
    """
    db.init_app(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, web.json_errors)
    enabled = app.config.get("BUS_WORKER", os.environ.get("FLEET_BUS_WORKER", "1") != "0")
    key = app.config["BUS_KEYS"].get(app.config["AGENT_NAME"])
    if not enabled or key is None:
        return
    worker = DeliveryWorker(db.store_path(app), app.extensions["bus.writer"],
                            app.config["AGENT_NAME"], key, app.extensions["fleet.registry"],
                            settings(app))
    app.extensions["bus.worker"] = worker
    app.before_request(worker.start)  # restarts the threads in a forked child
    worker.start()
