"""``fleet status``: SSH and health of every agent, in parallel."""

from __future__ import annotations

import json
import sys

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.status import DEFAULT_TIMEOUT, AgentStatus, probe_fleet


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds each SSH or HTTP probe may take.")
@pass_cli
def status(cli: CliContext, as_json: bool, timeout: float) -> None:
    """SSH reachability and health of every agent; exit 1 if any agent is unhealthy."""
    registry = cli.registry
    results = probe_fleet(registry, timeout=timeout)
    healthy = all(result.healthy for result in results)
    if as_json:
        click.echo(json.dumps({"fleet": registry.name, "healthy": healthy,
                               "agents": [result.to_dict() for result in results]}, indent=2))
    else:
        click.echo(format_table(results))
    if not healthy:
        sys.exit(1)


def format_table(results: list[AgentStatus]) -> str:
    """A table for people: one row per agent, reasons in full at the end of the row."""
    rows = [("AGENT", "ROLE", "HOST", "SSH", "HEALTH", "RELEASE", "SOUL")]
    for result in results:
        rows.append((
            result.agent, result.role, result.host,
            "ok" if result.ssh == "ok" else "FAIL",
            "ok" if result.health == "ok" else "FAIL",
            result.release or "-",
            (result.soul_sha256 or "-")[:12],
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    for result in results:
        if result.ssh != "ok":
            lines.append(f"{result.agent}: ssh: {result.ssh}")
        if result.health != "ok":
            lines.append(f"{result.agent}: health: {result.health}")
    return "\n".join(lines)
