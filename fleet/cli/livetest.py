"""``fleet test``: the live checks of ``tests/live`` against every agent, in parallel."""

from __future__ import annotations

import click

from fleet.cli.context import CliContext, pass_cli


@click.command("test")
@click.option("--limit", multiple=True, metavar="NAME",
              help="Only these agents or groups (role, capability); repeatable.")
@pass_cli
def live_test_command(cli: CliContext, limit: tuple[str, ...]) -> None:
    """Run the testinfra suite (tests/live) on every agent's node; exit 1 naming host and
    check when one fails."""
    from fleet.control.livetest import live_test
    from fleet.control.rollout import project_dir, select

    registry = cli.registry
    results = live_test(registry, select(registry, limit), project_dir(), click.echo)
    for result in results:
        state = "ok" if result.ok else "FAILED"
        click.echo(f"    {result.agent:<16} {state:<7} {result.passed} passed, "
                   f"{len(result.failed)} failed")
    failures = [(result.agent, check, message) for result in results
                for check, message in result.failed]
    for agent, check, message in failures:
        click.echo(f"Error: {agent}: {check}: {message}", err=True)
    empty = [result.agent for result in results if not result.passed and not result.failed]
    for agent in empty:
        click.echo(f"Error: {agent}: no check ran", err=True)
    if failures or empty:
        raise click.exceptions.Exit(1)
