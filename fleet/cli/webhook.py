"""``fleet webhook serve`` (gunicorn and the dispatcher) and ``fleet webhook dispatch``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import click

from fleet.core.serving import FactoryServer
from fleet.webhook.checkout import redact
from fleet.webhook.config import CONFIG_ENV, load_settings

DISPATCHER_START_S = 10.0


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE``: exported as ``$FLEET_WEBHOOK_CONFIG`` for the processes started."""
    return click.option(
        "--config", "config_file", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
        help="KEY=value settings file (default: $FLEET_WEBHOOK_CONFIG); the environment wins "
             "over it.")(command)


@click.group()
def webhook() -> None:
    """Run the deploy webhook receiver."""


@webhook.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for a forge on another host).")
@click.option("--port", type=click.IntRange(1, 65535), default=9876, show_default=True,
              help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="gunicorn worker processes (they enqueue and read; one dispatcher deploys).")
@config_option
def serve(host: str, port: int, workers: int, config_file: str | None) -> None:
    """Serve POST /hooks/{gitea,github,gitlab} and the read API until interrupted, with the
    dispatcher (`fleet webhook dispatch`) that runs the deploys in its own process.

    Settings: FLEET_WEBHOOK_SECRET, FLEET_GITLAB_TOKEN, FLEET_READ_TOKEN, FLEET_REPO_URL,
    FLEET_DEPLOY_TAG (default PROD), FLEET_STATE_DIR, FLEET_HEALTH_CHECK.
    """
    from fleet.webhook.dispatcher import running, spawn

    if config_file:
        os.environ[CONFIG_ENV] = os.path.abspath(config_file)
    settings = load_settings()
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    click.echo(f"fleet webhook: http://{host}:{port}/hooks/{{gitea,github,gitlab}} deploys tag "
               f"{settings.deploy_tag!r} of {redact(settings.repo_url)}", err=True)
    dispatcher = spawn(os.getpid())  # this process becomes gunicorn's master: it watches it
    deadline = time.monotonic() + DISPATCHER_START_S  # so that no web worker starts another
    while not running(settings.state_dir) and dispatcher.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    FactoryServer("fleet.webhook:create_app", {  # gevent, deadlines, limits: fleet.core.serving
        "bind": f"{host}:{port}", "workers": workers, "accesslog": "-",
        "proc_name": "fleet-webhook"}).run()


@webhook.command()
@click.option("--parent-pid", type=int, default=None, metavar="PID",
              help="End (between deploys) once process PID is gone (the gunicorn master).")
@config_option
def dispatch(parent_pid: int | None, config_file: str | None) -> None:
    """Run the deploy dispatcher: the one process that claims queued runs and deploys them.

    `fleet webhook serve` and the web workers start it; it exits at once when another
    dispatcher of the same FLEET_STATE_DIR runs.
    """
    from fleet.webhook.dispatcher import run

    if config_file:
        os.environ[CONFIG_ENV] = os.path.abspath(config_file)
    logging.basicConfig(level=logging.INFO, format="[dispatcher %(process)d] %(message)s")
    run(load_settings(), parent_pid=parent_pid)
