"""``fleet move AGENT --to HOST``: thin over :mod:`fleet.control.move`."""

from __future__ import annotations

import click

from fleet.cli.context import CliContext, pass_cli


@click.command()
@click.argument("agent")
@click.option("--to", "to", required=True, metavar="HOST",
              help="The new server's host name or IP address (its SSH host key pinned).")
@click.option("--shared-host", is_flag=True,
              help="HOST already runs another agent (on another gateway port): allowed.")
@click.option("--purge", is_flag=True,
              help="Also delete the agent's state dir and snapshots on the old server.")
@click.option("--yes", "-y", is_flag=True, help="Write the registry edit without asking.")
@pass_cli
def move(cli: CliContext, agent: str, to: str, shared_host: bool, purge: bool,
         yes: bool) -> None:
    """Move AGENT (identity, soul, config, memory, bus inbox and outbox) to the server HOST:
    hand over its final snapshot, restore it there, set its host in the registry (one edit,
    shown first), redeploy the registry copy to every agent, remove the old service."""
    from fleet.control.move import move as run_move
    from fleet.control.move import plan_move
    from fleet.control.records import record_path

    plan = plan_move(cli.registry, agent, to, shared=shared_host, purge=purge)
    click.echo(plan.diff, nl=False)
    if not yes:
        click.confirm(f"Move {agent} from {plan.agent.host} to {to} and write this edit?",
                      abort=True)
    run_id = run_move(plan, click.echo)
    click.echo(f"{agent} moved from {plan.agent.host} to {to}; old state "
               f"{'purged' if purge else 'kept there'} (record: {record_path(run_id)})")
