"""``fleet dashboard``: the fleet dashboard served locally from the controller."""

from __future__ import annotations

import os

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.records import RECORDS_ENV, records_dir
from fleet.core.registry import REGISTRY_ENV
from fleet.dashboard.app import REFRESH_ENV


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8700, show_default=True)
@click.option("--refresh", type=click.FloatRange(1, 3600), default=5.0, show_default=True,
              help="Seconds between the page's updates.")
@pass_cli
def dashboard(cli: CliContext, host: str, port: int, refresh: float) -> None:
    """Serve the fleet dashboard (health, release, soul and config state, runs) locally."""
    from fleet.core.serving import FactoryServer

    registry = cli.registry  # validated before serving
    os.environ.update({REGISTRY_ENV: str(registry.path.resolve()),
                       RECORDS_ENV: str(records_dir().resolve()), REFRESH_ENV: str(refresh)})
    click.echo(f"==> dashboard of {registry.name} on http://{host}:{port}/dashboard/")
    FactoryServer("fleet.dashboard.app:create_app", {  # gevent, deadlines: fleet.core.serving
        "bind": f"{host}:{port}", "workers": 1, "accesslog": None}).run()
