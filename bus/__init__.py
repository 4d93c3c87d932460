"""The inter-agent message bus: durable, signed, brokerless -- a Flask extension.

Each agent's gateway receives messages into its own SQLite store (``<STATE_DIR>/
bus.sqlite3``) and delivers its outbox with a background worker. Mount it on any Flask
app::

    bus = Bus(app, agents=registry.agents)              # or Bus(); bus.init_app(app, ...)

Its state (:class:`bus.state.BusState`) lives in ``app.extensions["bus"]``; the store layer
(:mod:`bus.store`, :mod:`bus.writer`) knows nothing of Flask, and nothing here imports the
app that mounts it.

Endpoints and who may call them:

- ``POST /message``, ``POST /messages/batch`` -- any fleet agent, signed with its own key
  (see :mod:`bus.signing`).
- ``GET /messages``, ``POST /messages/ack``, ``POST /outbox``, ``GET /bus/stats``,
  ``GET /bus/dead-letters``, ``POST /bus/dead-letters/redrive`` -- signed with this agent's
  own key only (its runtime, or the operator who holds every key).
- ``GET /metrics``, ``GET /openapi.json`` -- public (counts and schema, no content).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from bus import db, inbox, openapi, receive, stats, store, web
from bus import send as sending
from bus.send import send
from bus.state import Address, BusState
from bus.worker import DeliveryWorker, Settings
from bus.writer import GroupWriter

__all__ = ["Bus", "send"]
BLUEPRINTS = (receive.bp, inbox.bp, sending.bp, stats.bp, openapi.bp)
SETTINGS: dict[str, Any] = {  # app setting -> (environment variable, type, Settings field)
    "BUS_MAX_ATTEMPTS": ("FLEET_BUS_MAX_ATTEMPTS", int, "max_attempts"),
    "BUS_RETRY_BASE": ("FLEET_BUS_RETRY_BASE", float, "retry_base"),
    "BUS_RETRY_MAX": ("FLEET_BUS_RETRY_MAX", float, "retry_max"),
    "BUS_GIVE_UP_AFTER": ("FLEET_BUS_GIVE_UP_AFTER", float, "give_up_after"),
    "BUS_LEASE_SECONDS": ("FLEET_BUS_LEASE_SECONDS", float, "lease_seconds"),
    "BUS_DELIVERY_THREADS": ("FLEET_BUS_DELIVERY_THREADS", int, "threads"),
    "BUS_POLL_SECONDS": ("FLEET_BUS_POLL_SECONDS", float, "poll_seconds"),
    "BUS_RETENTION_DAYS": ("FLEET_BUS_RETENTION_DAYS", float, "retention_days"),
}


def setting(app: Flask, name: str, env: str, default: Any = None) -> Any:
    """App setting ``name``, else environment variable ``env``, else ``default``."""
    value = app.config.get(name)
    return os.environ.get(env, default) if value is None else value


def settings(app: Flask) -> Settings:
    """Delivery settings: app config, else ``FLEET_BUS_*`` environment, else defaults."""
    values: dict[str, Any] = {}
    for name, (env, kind, field) in SETTINGS.items():
        value = setting(app, name, env)
        if value is not None:
            values[field] = kind(value)
    return Settings(**values)


class Bus:
    """The bus as a Flask extension (flask-sqlalchemy's shape)."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        if app is not None:
            self.init_app(app, **options)

    def init_app(self, app: Flask, agents: Mapping[str, Address] | None = None,
                 agent: str | None = None, keys: Mapping[str, str] | None = None,
                 state_dir: str | Path | None = None) -> BusState:
        """Create the store, mount the blueprints, the body limit (every route) and the
        delivery worker; the :class:`BusState` kept in ``app.extensions["bus"]``.

        ``agents`` is the fleet (name -> address with ``host`` and ``gateway_port``), e.g.
        a registry's agents; ``agent`` (``BUS_AGENT``, else ``AGENT_NAME``), ``keys``
        (``BUS_KEYS``) and ``state_dir`` (``BUS_STATE_DIR``, else ``STATE_DIR``) default to
        app settings. ``BUS_MAX_BODY`` (bytes, 256 KiB), ``BUS_INBOX_QUOTA``
        (``FLEET_BUS_INBOX_QUOTA``, 50,000) and ``BUS_WORKER`` (``FLEET_BUS_WORKER``, on)
        tune it.
        """
        config = app.config
        folder = Path(state_dir or config.get("BUS_STATE_DIR") or config["STATE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / store.STORE_NAME
        store.init_db(path)
        found = BusState(
            agent=agent or config.get("BUS_AGENT") or config["AGENT_NAME"],
            keys=dict(config["BUS_KEYS"] if keys is None else keys),
            agents=dict(agents if agents is not None else config["BUS_AGENTS"]),
            store=path, writer=GroupWriter(path), settings=settings(app),
            max_body=int(config.get("BUS_MAX_BODY") or 256 * 1024),
            inbox_quota=int(setting(app, "BUS_INBOX_QUOTA", "FLEET_BUS_INBOX_QUOTA", 50_000)))
        app.extensions["bus"] = found
        app.teardown_appcontext(db.close_db)
        app.before_request(web.limit_body)
        for blueprint in BLUEPRINTS:
            app.register_blueprint(blueprint)
        app.register_error_handler(HTTPException, web.json_errors)
        enabled = setting(app, "BUS_WORKER", "FLEET_BUS_WORKER", "1") not in (False, "0")
        key = found.keys.get(found.agent)
        if enabled and key is not None:
            found.worker = DeliveryWorker(path, found.writer, found.agent, key, found.agents,
                                          found.settings)
            app.before_request(found.worker.start)  # restarts the threads in a forked child
            found.worker.start()
        return found
