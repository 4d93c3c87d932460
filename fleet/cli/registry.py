"""``fleet registry validate|show`` and ``fleet find``."""

from __future__ import annotations

import json

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.core.registry import load_registry


@click.group()
def registry() -> None:
    """Check and show the fleet registry."""


@registry.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@pass_cli
def validate(cli: CliContext, path: str | None) -> None:
    """Validate PATH (default: the --registry file) and report every problem."""
    loaded = load_registry(path) if path else cli.registry
    click.echo(f"{loaded.path}: ok, {len(loaded)} agents ({', '.join(loaded.agents)})")


@registry.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@pass_cli
def show(cli: CliContext, as_json: bool) -> None:
    """Show every agent with its defaults filled in."""
    loaded = cli.registry
    if as_json:
        click.echo(json.dumps(loaded.to_dict(), indent=2))
        return
    click.echo(f"{'AGENT':<16} {'ROLE':<13} {'HOST':<22} {'MODEL':<26} CAPABILITIES")
    for agent in loaded:
        address = f"{agent.host}:{agent.gateway_port}"
        click.echo(f"{agent.name:<16} {agent.role:<13} {address:<22} {agent.model:<26} "
                   f"{','.join(agent.capabilities)}")


@click.command()
@click.option("--capability", "-c", required=True, help="Capability to look for.")
@click.option("--json", "as_json", is_flag=True, help="Print matches as JSON.")
@pass_cli
def find(cli: CliContext, capability: str, as_json: bool) -> None:
    """List the agents that declare a capability (exit 1 when none does)."""
    matches = cli.registry.with_capability(capability)
    if as_json:
        click.echo(json.dumps([{"name": a.name, **a.to_dict()} for a in matches], indent=2))
    else:
        for agent in matches:
            click.echo(f"{agent.name}\t{agent.role}\t{agent.gateway_url}")
    if not matches:
        raise click.ClickException(f"no agent has capability {capability!r}")
