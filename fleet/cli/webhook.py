"""``fleet webhook serve``: run the deploy webhook receiver under gunicorn."""

from __future__ import annotations

import os

import click

from fleet.serving import FactoryServer
from fleet.webhook.checkout import redact
from fleet.webhook.config import CONFIG_ENV, load_settings


@click.group()
def webhook() -> None:
    """Run the deploy webhook receiver."""


@webhook.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for a forge on another host).")
@click.option("--port", type=click.IntRange(1, 65535), default=9876, show_default=True,
              help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="gunicorn worker processes (deploys still run one at a time).")
@click.option("--config", "config_file", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
              help="KEY=value settings file (default: $FLEET_WEBHOOK_CONFIG); the "
                   "environment wins over it.")
def serve(host: str, port: int, workers: int, config_file: str | None) -> None:
    """Serve POST /hooks/{gitea,github,gitlab} and the read API until interrupted.

    Settings: FLEET_WEBHOOK_SECRET, FLEET_GITLAB_TOKEN, FLEET_READ_TOKEN, FLEET_REPO_URL,
    FLEET_DEPLOY_TAG (default PROD), FLEET_STATE_DIR, FLEET_DEPLOY_COMMAND.
    """
    if config_file:
        os.environ[CONFIG_ENV] = os.path.abspath(config_file)
    settings = load_settings()
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    click.echo(f"fleet webhook: http://{host}:{port}/hooks/{{gitea,github,gitlab}} deploys tag "
               f"{settings.deploy_tag!r} of {redact(settings.repo_url)}", err=True)
    FactoryServer("fleet.webhook:create_app", {
        "bind": f"{host}:{port}", "workers": workers, "accesslog": "-",
        "proc_name": "fleet-webhook"}).run()
