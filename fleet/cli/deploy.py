"""``fleet deploy`` and ``fleet rollback``: thin over :mod:`fleet.rollout` and
:mod:`fleet.rollback`."""

from __future__ import annotations

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.records import record_path
from fleet.rollback import rollback_agent
from fleet.rollout import RolloutOptions, deploy_fleet


@click.command()
@click.option("--dry", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show file diffs (secret values masked).")
@click.option("--limit", multiple=True, metavar="NAME",
              help="Only these agents or groups (role, capability); repeatable.")
@click.option("--batch", type=click.IntRange(min=1), default=None, metavar="N",
              help="Deploy workers N at a time (default: all at once after the canary).")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop the rollout when more hosts than this have failed.")
@pass_cli
def deploy(cli: CliContext, dry: bool, diff: bool, limit: tuple[str, ...], batch: int | None,
           max_failures: int) -> None:
    """Deploy the fleet: the orchestrator first as a canary, then the workers."""
    options = RolloutOptions(dry=dry, diff=diff, limit=limit, batch=batch,
                             max_failures=max_failures)
    result = deploy_fleet(cli.registry, options, click.echo)
    click.echo(f"==> run {result.run_id}: {result.status} (record: {record_path(result.run_id)})")
    for name, entry in result.hosts.items():
        changed = len(entry.get("changed", []))
        restarted = "restarted" if entry.get("restarted") else "not restarted"
        detail = "; ".join(entry.get("drift", []) or entry.get("problems", [])
                           or [entry.get("reason", "")])
        click.echo(f"    {name:<16} {entry.get('status', '?'):<12} {entry.get('release')} "
                   f"{changed} changed, {restarted}{'; ' + detail if detail else ''}")
    if not result.ok:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("name")
@click.option("--to", "to", metavar="RELEASE", help="Release id (default: the previous one).")
@pass_cli
def rollback(cli: CliContext, name: str, to: str | None) -> None:
    """Roll agent NAME back to an earlier release, restart and verify it."""
    entry = rollback_agent(cli.registry, name, to, click.echo)
    click.echo(f"==> {name}: {entry.get('status')} on release {entry.get('release')} "
               f"(record: {record_path(entry['run_id'])})")
    if entry.get("status") != "ok":
        problems = entry.get("verify", {}).get("problems") or entry.get("problems") or []
        for problem in problems:
            click.echo(f"    {problem}", err=True)
        raise click.exceptions.Exit(1)
