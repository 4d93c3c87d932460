"""``fleet work ...``: the fleet's autonomous work from the operator's seat (thin over
:mod:`fleet.control.schedules`)."""

from __future__ import annotations

import click

from fleet.cli.context import CliContext, pass_cli


@click.group()
def work() -> None:
    """Autonomous work: the agents' schedules."""


@work.command("run-now")
@click.argument("agent")
@click.argument("schedule")
@pass_cli
def run_now_command(cli: CliContext, agent: str, schedule: str) -> None:
    """Run AGENT's SCHEDULE now: its request goes into AGENT's inbox (or, with a capability,
    is routed by AGENT's runtime), as when its timer fires."""
    from fleet.control.schedules import run_now

    started = run_now(cli.registry, agent, schedule)
    routed = (f", routed by capability {started.schedule.capability}"
              if started.schedule.capability else "")
    click.echo(f"{started.agent}: schedule {schedule} ran ({started.unit}): its request is "
               f"queued for {started.agent}'s inbox{routed}")
