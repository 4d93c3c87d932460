"""The ``fleet`` command line: a thin click layer over the library.

Library errors (:class:`fleet.errors.FleetError`) become one line on stderr plus a hint,
exit code 1; usage errors keep click's exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from fleet import __version__
from fleet.cli.bus import bus
from fleet.cli.context import CliContext
from fleet.cli.deploy import deploy, rollback
from fleet.cli.gateway import gateway
from fleet.cli.lab import lab
from fleet.cli.registry import find, registry
from fleet.cli.runs import runs
from fleet.cli.status import status
from fleet.cli.webhook import webhook
from fleet.errors import FleetError


class FleetGroup(click.Group):
    """A group that prints library errors as one line with a hint instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
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


for command in (registry, find, status, lab, deploy, rollback, runs, webhook, bus, gateway):
    main.add_command(command)
