"""``fleet gateway serve``: run one agent's gateway (health, agent card, bus) locally."""

from __future__ import annotations

import os

import click

from bus.keys import format_keyring
from fleet.cli.context import CliContext, pass_cli
from fleet.control.secrets import BUS_KEY, BUS_KEYRING, load_secrets
from fleet.core.serving import GATEWAY_WORKERS, FactoryServer


@click.group()
def gateway() -> None:
    """Run an agent gateway locally."""


@gateway.command()
@click.option("--agent", required=True, envvar="FLEET_AGENT",
              help="Agent (registry name) whose gateway to run.")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port to listen on (default: the agent's gateway_port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--state-dir", envvar="FLEET_STATE_DIR", type=click.Path(file_okay=False),
              help="State dir holding bus.sqlite3 (default: $FLEET_STATE_DIR, else "
                   ".fleet/state/AGENT).")
@click.option("--workers", type=click.IntRange(1, 64), default=GATEWAY_WORKERS,
              show_default=True,
              help="gunicorn worker processes (gevent: each serves many connections; "
                   "see fleet.core.serving).")
@click.option("--dev", is_flag=True, help="Use Flask's threaded development server.")
@pass_cli
def serve(cli: CliContext, agent: str, port: int | None, host: str, state_dir: str | None,
          workers: int, dev: bool) -> None:
    """Serve AGENT's gateway until interrupted (bus keys: $FLEET_BUS_PUBLIC_KEYS and
    $FLEET_BUS_PRIVATE_KEY, else from $FLEET_SECRETS)."""
    registry = cli.registry
    record = registry.get(agent)
    os.environ["FLEET_AGENT"] = agent
    os.environ["FLEET_REGISTRY"] = str(registry.path.resolve())
    if state_dir:
        os.environ["FLEET_STATE_DIR"] = state_dir
    if not os.environ.get(BUS_KEYRING) or not os.environ.get(BUS_KEY):
        secrets = load_secrets(registry=registry)
        keys = secrets.public_keyring()
        own = secrets.agents.get(agent, {}).get(BUS_KEY)
        if keys and not os.environ.get(BUS_KEYRING):
            os.environ[BUS_KEYRING] = format_keyring(keys)
        if own and not os.environ.get(BUS_KEY):
            os.environ[BUS_KEY] = own
    port = port or record.gateway_port
    if dev:
        from fleet.node.gateway import create_app

        create_app().run(host=host, port=port, threaded=True, use_reloader=False)
        return
    # served like the node's unit: fleet.core.serving
    FactoryServer("fleet.node.gateway:create_app", {
        "bind": f"{host}:{port}", "workers": workers, "accesslog": None,
        "loglevel": "warning"}).run()
