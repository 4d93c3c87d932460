"""``fleet tools list|calls AGENT``: an agent's declared tools and the record of their calls."""

from __future__ import annotations

import json

import click

from bus.timestamps import utc_timestamp
from fleet.cli.bus import client
from fleet.cli.context import CliContext, pass_cli


@click.group()
def tools() -> None:
    """The agents' tools (run by their gateways for allowed, signed callers)."""


@tools.command("list")
@click.argument("agent")
@pass_cli
def list_tools(cli: CliContext, agent: str) -> None:
    """AGENT's tools: name, timeout, who may call them."""
    found = cli.registry.get(agent).tools
    if not found:
        click.echo(f"{agent} declares no tools.")
    for tool in found:
        runs = " ".join(tool.command) if tool.command else f"handler {tool.handler}"
        callers = ", ".join([agent, *tool.callers])
        click.echo(f"{tool.name:<20} {tool.timeout:g} s  callers: {callers}  runs: {runs}")


@tools.command()
@click.argument("agent")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_cli
def calls(cli: CliContext, agent: str, limit: int, as_json: bool) -> None:
    """AGENT's recorded tool calls, newest first: when, caller (and the requester it called
    for), tool, outcome (a refusal with its status and reason), exit, duration, arguments
    (secret-looking ones masked)."""
    with client(cli, agent) as gateway:
        found = gateway.call("GET", "/tool-calls", {"limit": limit})["calls"]
    for call in found:
        if as_json:
            click.echo(json.dumps(call))
            continue
        when = utc_timestamp(call["at"])
        duration = "-" if call["duration_ms"] is None else f"{call['duration_ms']:.0f} ms"
        who = call["caller"] or "(unverified)"
        if call.get("on_behalf_of"):
            who += f" for {call['on_behalf_of']}"
        outcome = call["outcome"]
        if outcome == "refused":
            outcome += f" {call.get('status')}: {call.get('error')}"
        click.echo(f"#{call['seq']} {when} {who} -> {call['tool']} "
                   f"{outcome} exit={call['exit']} {duration} "
                   f"{json.dumps(call['args'])}")
