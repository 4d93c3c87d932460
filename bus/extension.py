"""The bus as a Flask extension: :class:`Bus` (see :mod:`bus` for the endpoints)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

import bus.sending as sending
from bus import db, inbox, openapi, receive, stats, store, web
from bus.keys import (
    PublicKey,
    SigningKey,
    format_keyring,
    keyring_of,
    parse_keyring,
    signing_key,
)
from bus.state import Address, BusState
from bus.watch import InboxWatch
from bus.worker import DeliveryWorker, Settings
from bus.writer import GroupWriter

BLUEPRINTS = (receive.bp, inbox.bp, sending.bp, stats.bp, openapi.bp)
SETTINGS: dict[str, Any] = {  # app setting -> (type, Settings field)
    "BUS_MAX_ATTEMPTS": (int, "max_attempts"),
    "BUS_RETRY_BASE": (float, "retry_base"),
    "BUS_RETRY_MAX": (float, "retry_max"),
    "BUS_GIVE_UP_AFTER": (float, "give_up_after"),
    "BUS_LEASE_SECONDS": (float, "lease_seconds"),
    "BUS_DELIVERY_THREADS": (int, "threads"),
    "BUS_POLL_SECONDS": (float, "poll_seconds"),
    "BUS_RETENTION_DAYS": (float, "retention_days"),
}


TUNING = (*SETTINGS, "BUS_MAX_BODY", "BUS_INBOX_QUOTA", "BUS_MAX_WAIT_MS", "BUS_WORKER",
          "BUS_MAX_LONG_POLLS")
"""The app settings that tune the bus (beside who it is: ``BUS_AGENT``/``AGENT``, its keys
``BUS_PUBLIC_KEYS`` and ``BUS_PRIVATE_KEY``, and ``BUS_STATE_DIR``/``STATE_DIR``)."""


def setting(app: Flask, name: str, default: Any = None) -> Any:
    """App setting ``name`` (given, or loaded by the app from its environment), else
    ``default``."""
    value = app.config.get(name)
    return default if value is None or value == "" else value


def settings(app: Flask) -> Settings:
    """Delivery settings: the app's ``BUS_*`` settings, else the defaults."""
    values: dict[str, Any] = {}
    for name, (kind, field) in SETTINGS.items():
        value = setting(app, name)
        if value is not None:
            values[field] = kind(value)
    return Settings(**values)


def trusted(keys: Mapping[str, PublicKey] | Mapping[str, str] | str) -> dict[str, PublicKey]:
    """The trusted keys by key id from a keyring text, a mapping of key id to
    :class:`PublicKey`, or private key texts by name (a test fleet: their public keys)."""
    if isinstance(keys, str):
        return parse_keyring(keys)
    texts = {name: value for name, value in keys.items() if isinstance(value, str)}
    found = {ident: key for ident, key in keys.items() if isinstance(key, PublicKey)}
    return {**found, **parse_keyring(format_keyring(keyring_of(texts.items())))}


class Bus:
    """The bus as a Flask extension (flask-sqlalchemy's shape)."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        if app is not None:
            self.init_app(app, **options)

    def init_app(self, app: Flask, agents: Mapping[str, Address] | None = None,
                 agent: str | None = None,
                 keys: Mapping[str, PublicKey] | Mapping[str, str] | str | None = None,
                 signer: SigningKey | str | None = None,
                 state_dir: str | Path | None = None) -> BusState:
        """Create the store, mount the blueprints, the body limit (every route) and the
        delivery worker; the :class:`BusState` kept in ``app.extensions["bus"]``.

        ``agents`` is the fleet (name -> address with ``host`` and ``gateway_port``), e.g.
        a registry's agents; ``agent`` (``BUS_AGENT``, else ``AGENT``), ``keys`` (the
        trusted public keys by key id, or a keyring text: ``BUS_PUBLIC_KEYS``), ``signer``
        (this agent's private key, or its text: ``BUS_PRIVATE_KEY``; without one the outbox
        is not delivered) and ``state_dir`` (``BUS_STATE_DIR``, else ``STATE_DIR``) default
        to app settings. ``BUS_MAX_BODY`` (bytes, 256 KiB), ``BUS_INBOX_QUOTA`` (50,000),
        ``BUS_MAX_WAIT_MS`` (the longest long poll of ``GET /messages``, 5,000),
        ``BUS_WORKER`` (on) and ``BUS_MAX_LONG_POLLS`` (250: the long polls one process holds
        at once; one more gets 429 with ``Retry-After``) tune it, with the delivery settings
        of :data:`SETTINGS`.

        The bus reads ``app.config`` only: the app loads it, e.g. from the environment with
        ``app.config.from_prefixed_env("FLEET")`` (``FLEET_BUS_MAX_ATTEMPTS`` sets
        ``BUS_MAX_ATTEMPTS``), as the fleet's gateway does.
        """
        config = app.config
        folder = Path(state_dir or config.get("BUS_STATE_DIR") or config["STATE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / store.STORE_NAME
        store.init_db(path)
        name = agent or config.get("BUS_AGENT") or config["AGENT"]
        ring = config.get("BUS_PUBLIC_KEYS", "") if keys is None else keys
        own = config.get("BUS_PRIVATE_KEY") if signer is None else signer
        found = BusState(
            agent=name, keys=trusted(ring),
            signer=signing_key(name, own) if isinstance(own, str) and own else own or None,
            agents=dict(agents if agents is not None else config["BUS_AGENTS"]),
            store=path, writer=GroupWriter(path), settings=settings(app),
            watch=InboxWatch(path, int(setting(app, "BUS_MAX_LONG_POLLS", 250))),
            max_body=int(setting(app, "BUS_MAX_BODY", 256 * 1024)),
            inbox_quota=int(setting(app, "BUS_INBOX_QUOTA", 50_000)),
            max_wait_ms=int(setting(app, "BUS_MAX_WAIT_MS", 5_000)))
        app.extensions["bus"] = found
        app.teardown_appcontext(db.close_db)
        app.before_request(web.limit_body)
        for blueprint in BLUEPRINTS:
            app.register_blueprint(blueprint)
        app.register_error_handler(HTTPException, web.json_errors)
        enabled = setting(app, "BUS_WORKER", "1") not in (False, "0")
        if enabled and found.signer is not None:
            found.worker = DeliveryWorker(path, found.writer, found.agent, found.signer,
                                          found.agents, found.settings)
            app.before_request(found.worker.start)  # restarts the threads in a forked child
            found.worker.start()
        return found


