"""``fleet deploy`` and ``fleet rollback``: thin over :mod:`fleet.control.rollout` (one rollout for
both, and for the webhook). On a terminal the rollout is drawn live
(:class:`fleet.cli.progress.RolloutView`); with ``--plain`` or output to a file or pipe, each
stage's pyinfra output is streamed as it comes. Either way the run's outcome is then printed
from its record."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.records import record_path
from fleet.control.rollout import RolloutOptions, RolloutResult, deploy_fleet
from fleet.core.registry import Registry, printable

limit_option = click.option(
    "--limit", multiple=True, metavar="NAME",
    help="Only these agents or groups (role, capability); repeatable.")
batch_option = click.option(
    "--batch", type=click.IntRange(min=1), default=None, metavar="N",
    help="Workers N at a time (default: all at once after the canary).")
max_failures_option = click.option(
    "--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
    help="Stop the rollout when more hosts than this have failed.")


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--plain`` and ``-v``: how the rollout is shown."""
    command = click.option(
        "-v", "--verbose", is_flag=True,
        help="On a terminal, also show pyinfra's own lines above the live view (fleet "
             "deploy --diff shows them too: its diffs are among them).")(command)
    return click.option(
        "--plain", is_flag=True,
        help="Stream each stage's pyinfra output instead of the live view (the default when "
             "the output is not a terminal).")(command)


@click.command()
@click.option("--dry", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show file diffs (secret values masked).")
@limit_option
@click.option("--region", "regions", multiple=True, metavar="NAME",
              help="Only the agents of this region; repeatable.")
@click.option("--stop-on-unreachable-region", is_flag=True,
              help="Stop the rollout when a region cannot be reached (default: skip it, "
                   "deploy the others, and end the run partial).")
@batch_option
@max_failures_option
@click.option("--prestage/--no-prestage", default=None,
              help="Upload and unpack the release on later stages' hosts while the earlier "
                   "stages deploy, before their gate; nothing switches until it opens "
                   "(default: the registry's fleet.prestage, else off).")
@output_options
@pass_cli
def deploy(cli: CliContext, dry: bool, diff: bool, limit: tuple[str, ...],
           regions: tuple[str, ...], stop_on_unreachable_region: bool, batch: int | None,
           max_failures: int, prestage: bool | None, plain: bool, verbose: bool) -> None:
    """Deploy the fleet: the orchestrator first as a canary, then the workers (region by
    region when the registry lists ``fleet.regions``)."""
    options = RolloutOptions(dry=dry, diff=diff, limit=limit, batch=batch,
                             max_failures=max_failures, regions=regions,
                             stop_on_unreachable_region=stop_on_unreachable_region,
                             prestage=prestage)
    report(run(cli.registry, options, plain, verbose or diff))  # diffs are pyinfra's lines


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--to", "to", metavar="RELEASE", help="Release id (default: the previous one).")
@click.option("--with-state", is_flag=True,
              help="Also restore each agent's state snapshot taken before the release being "
                   "rolled back was deployed (an agent without one is not rolled back).")
@limit_option
@batch_option
@max_failures_option
@output_options
@pass_cli
def rollback(cli: CliContext, names: tuple[str, ...], to: str | None, with_state: bool,
             limit: tuple[str, ...], batch: int | None, max_failures: int, plain: bool,
             verbose: bool) -> None:
    """Roll agents back to an earlier release, restart and verify them (canary first)."""
    if not names and not limit:
        raise click.UsageError("name the agents to roll back (NAME... or --limit GROUP)")
    options = RolloutOptions(limit=(*names, *limit), batch=batch, max_failures=max_failures,
                             action="rollback", rollback_to=to,
                             rollback_with_state=with_state)
    report(run(cli.registry, options, plain, verbose))


def run(registry: Registry, options: RolloutOptions, plain: bool,
        verbose: bool) -> RolloutResult:
    """The rollout, drawn live on a terminal unless ``plain``, else streamed as text. ``rich``
    is imported only for a terminal: the webhook receiver's node runs this without it."""
    if plain or not sys.stdout.isatty():
        return deploy_fleet(registry, options, click.echo)
    from fleet.cli.progress import RolloutView, terminal_console

    console = terminal_console()
    if plain or not console.is_terminal:
        return deploy_fleet(registry, options, click.echo)
    with RolloutView(console, verbose=verbose) as view:
        return deploy_fleet(registry, options, view.echo, view.observe)


def report(result: RolloutResult) -> None:
    """One line for the run and one per host, from the run record; exit 1 unless ok."""
    click.echo(f"==> run {result.run_id}: {result.status} (record: {record_path(result.run_id)})")
    unreachable = result.record.get("unreachable_regions", [])
    if unreachable:
        click.echo(f"    unreachable region(s), skipped: {', '.join(unreachable)}")
    for name, entry in result.hosts.items():
        if entry.get("status") == "planned":
            planned = entry.get("planned")
            count = "?" if planned is None else str(len(planned))
            click.echo(f"    {name:<16} planned      {count} change(s)"
                       + (f": {', '.join(planned)}" if planned else ""))
            continue
        changed = len(entry.get("changed", []))
        restarted = "restarted" if entry.get("restarted") else "not restarted"
        detail = printable("; ".join(([entry["reason"]] if entry.get("reason") else [])
                                     + (entry.get("drift", []) or entry.get("problems", []))))
        click.echo(f"    {name:<16} {entry.get('status', '?'):<12} {entry.get('release')} "
                   f"{changed} changed, {restarted}{'; ' + detail if detail else ''}")
    if not result.ok:
        raise click.exceptions.Exit(1)
