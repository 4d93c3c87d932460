"""The agent gateway: the Flask app every agent serves (health, agent card, message bus).

On a node it runs under gunicorn as ``fleet.gateway.wsgi:app`` with its settings in the
environment (the systemd unit's ``EnvironmentFile=``):

- ``FLEET_AGENT``: this agent's name in the registry
- ``FLEET_REGISTRY``: the registry file (a copy on the node)
- ``FLEET_STATE_DIR``: the agent's state dir (the bus store lives here)
- ``FLEET_BUS_PUBLIC_KEYS``: ``keyid=public,...`` the bus keys this gateway trusts
- ``FLEET_BUS_PRIVATE_KEY``: this agent's own Ed25519 bus key(s) (it signs with the first)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from bus import Bus, a2a
from bus.keys import PRIVATE_KEY_ENV, PUBLIC_KEYS_ENV
from fleet.gateway import card, health, tools
from fleet.registry import Registry, load_registry


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway app from the environment, overridden by ``test_config``."""
    app = Flask(__name__)
    agent = os.environ.get("FLEET_AGENT", "")
    app.config.from_mapping(
        AGENT_NAME=agent,
        REGISTRY_PATH=os.environ.get("FLEET_REGISTRY", "registry.yaml"),
        STATE_DIR=os.environ.get("FLEET_STATE_DIR") or str(Path(".fleet/state") / agent),
        BUS_KEYS=os.environ.get(PUBLIC_KEYS_ENV, ""),
        BUS_PRIVATE_KEY=os.environ.get(PRIVATE_KEY_ENV, ""),
    )
    if test_config is not None:
        app.config.update(test_config)
    registry = load_registry(app.config["REGISTRY_PATH"])
    app.extensions["fleet.registry"] = registry
    app.extensions["fleet.agent"] = registry.get(app.config["AGENT_NAME"])
    Path(app.config["STATE_DIR"]).mkdir(parents=True, exist_ok=True)
    _register_blueprints(app)
    return app


def _register_blueprints(app: Flask) -> None:
    """Mount every part of the gateway; each module owns one blueprint and its init_app."""
    health.init_app(app)
    card.init_app(app)
    registry: Registry = app.extensions["fleet.registry"]
    Bus(app, agents=registry.agents)  # the bus is an extension; the registry is its fleet
    a2a.init_app(app)  # the A2A binding the agent card advertises, into the bus's inbox
    tools.init_app(app)  # the tool execution API, on agents that declare tools
