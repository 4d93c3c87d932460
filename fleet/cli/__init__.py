"""The ``fleet`` command line: a thin click layer over the library.

Library errors (:data:`fleet.core.errors.USER_ERRORS`: a ``FleetError`` or the bus's ``BusError``)
become one line on stderr plus a hint, exit code 1; usage errors keep click's exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from fleet import __version__
from fleet.cli.context import CliContext
from fleet.core.errors import USER_ERRORS

# Subcommands, imported only when used: ``fleet deploy`` need not import the bus client,
# Flask or the lab (about 0.7 s of CPU before the deploy starts).
COMMANDS = {
    "registry": "fleet.cli.registry:registry",
    "find": "fleet.cli.registry:find",
    "status": "fleet.cli.status:status",
    "lab": "fleet.cli.lab:lab",
    "deploy": "fleet.cli.deploy:deploy",
    "rollback": "fleet.cli.deploy:rollback",
    "runs": "fleet.cli.runs:runs",
    "webhook": "fleet.cli.webhook:webhook",
    "bus": "fleet.cli.bus:bus",
    "gateway": "fleet.cli.gateway:gateway",
    "hosts": "fleet.cli.hosts:hosts",
    "dashboard": "fleet.cli.dashboard:dashboard",
    "test": "fleet.cli.livetest:live_test_command",
    "drift": "fleet.cli.drift:drift",
    "init": "fleet.cli.init:init",
    "ask": "fleet.cli.ask:ask",
    "tools": "fleet.cli.tools:tools",
    "keys": "fleet.cli.keys:keys",
    "secrets": "fleet.cli.secrets:secrets",
    "state": "fleet.cli.state:state",
    "memory": "fleet.cli.memory:memory",
    "move": "fleet.cli.move:move",
    "work": "fleet.cli.work:work",
}


class FleetGroup(click.Group):
    """A group that prints library errors as one line with a hint instead of a traceback, and
    imports a subcommand's module when that command is used (see ``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            lines = str(exc).splitlines() or [type(exc).__name__]
            for line in lines:
                click.echo(f"Error: {line}", err=True)
            if exc.hint:
                click.echo(f"Hint: {exc.hint}", err=True)
            sys.exit(1)


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleet")
@click.option(
    "--registry",
    "registry_path",
    envvar="FLEET_REGISTRY",
    type=click.Path(dir_okay=False),
    help="Fleet registry file (default: $FLEET_REGISTRY, else ./registry.yaml).",
)
@click.pass_context
def main(ctx: click.Context, registry_path: str | None) -> None:
    """Deploy and govern a fleet of LLM agents."""
    ctx.obj = CliContext(registry_path)

