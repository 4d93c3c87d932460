"""The agent gateway: the Flask app every agent serves (health, agent card, message bus, tool
API, the operator's memory and work APIs).

On a node it runs under gunicorn as ``fleet.node.gateway.wsgi:app``. Its settings come from the
environment (the systemd unit's ``EnvironmentFile=``) through Flask's
``app.config.from_prefixed_env("FLEET")``: each ``FLEET_NAME`` variable sets the setting
``NAME``, as text:

- ``FLEET_AGENT`` (``AGENT``): this agent's name in the registry
- ``FLEET_REGISTRY`` (``REGISTRY``): the registry file (a copy on the node)
- ``FLEET_STATE_DIR`` (``STATE_DIR``): the agent's state dir (the bus store lives here)
- ``FLEET_CONFIG``, ``FLEET_SOUL`` (``CONFIG``, ``SOUL``): the agent's config and soul files
  (default: beside the registry copy in ``/etc/fleet/AGENT/``)
- ``FLEET_BUS_PUBLIC_KEYS`` (``BUS_PUBLIC_KEYS``): ``keyid=public,...`` the bus keys this
  gateway trusts
- ``FLEET_BUS_PRIVATE_KEY`` (``BUS_PRIVATE_KEY``): this agent's own Ed25519 bus key(s) (it
  signs with the first)
- ``FLEET_BUS_*``: the bus's tuning (see :meth:`bus.Bus.init_app`)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Config, Flask

from bus import Bus, a2a
from bus.extension import TUNING
from fleet.core.errors import FleetError
from fleet.core.registry import Registry, load_registry
from fleet.node.gateway import card, health, memory, tools, work

ENV_PREFIX = "FLEET"
DEFAULTS: dict[str, Any] = {"AGENT": "", "REGISTRY": "registry.yaml", "STATE_DIR": "",
                            "CONFIG": "", "SOUL": "", "BUS_PUBLIC_KEYS": "",
                            "BUS_PRIVATE_KEY": ""}
FROM_ENVIRONMENT = (*DEFAULTS, *TUNING)
"""The settings the environment may set: no other ``FLEET_*`` variable of the agent's
environment (its secrets, ``FLEET_RELEASE``, Flask's own ``FLEET_DEBUG`` ...) reaches the app."""


def as_text(value: str) -> str:
    """Settings from the environment stay text (``from_prefixed_env`` would read ``true`` or
    ``12`` as JSON); each setting's reader converts its own."""
    return value


class SettingsError(FleetError):
    """The gateway's environment cannot be read as its settings."""


def settings_from_env(root_path: str) -> dict[str, Any]:
    """:data:`FROM_ENVIRONMENT` as ``from_prefixed_env("FLEET")`` reads them (as text)."""
    found = Config(root_path)
    try:
        found.from_prefixed_env(ENV_PREFIX, loads=as_text)
    except TypeError:  # FLEET_NAME and FLEET_NAME__PART both set: a value and a nested one
        raise SettingsError(
            f"the environment sets a {ENV_PREFIX}_* setting and a nested one (NAME__PART) "
            "of the same name", hint="Rename the variable with a double underscore.") from None
    return {name: found[name] for name in FROM_ENVIRONMENT
            if name in found and isinstance(found[name], str)}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway app from the environment, overridden by ``test_config``."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.update(settings_from_env(app.root_path))
    if test_config is not None:
        app.config.update(test_config)
    app.config["STATE_DIR"] = app.config["STATE_DIR"] or str(
        Path(".fleet/state") / app.config["AGENT"])
    registry = load_registry(app.config["REGISTRY"])
    app.extensions["fleet.registry"] = registry
    app.extensions["fleet.agent"] = registry.get(app.config["AGENT"])
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
    memory.init_app(app)  # the operator's view of conversation memory, on built-in runtimes
    work.init_app(app)  # the operator's view of work items, on the orchestrator
