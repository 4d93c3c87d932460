"""``fleet memory list|show|forget AGENT ...``: the conversations an agent's built-in runtime
remembers, through its gateway's memory API (signed with the operator's key, which alone may
read or forget them)."""

from __future__ import annotations

import json
from typing import Any

import click

from bus.client import BusClient
from bus.timestamps import utc_timestamp
from fleet.cli.ask import checked_id
from fleet.cli.bus import client
from fleet.cli.context import CliContext, pass_cli
from fleet.control.secrets import load_secrets
from fleet.core.errors import FleetError
from fleet.core.registry import NAME_RE
from fleet.node.runtime.memory import PEER_RULE, shown


class MemoryUseError(FleetError):
    """The memory API cannot be used as asked."""


def operator_client(cli: CliContext, agent: str) -> BusClient:
    """A client of ``agent``'s gateway signed with the operator's key (the only one the
    memory API takes)."""
    if cli.registry.get(agent).runtime != "builtin":
        raise MemoryUseError(f"{agent} has no built-in runtime, so it keeps no conversation "
                             "memory", hint="See `fleet find` for agents with a provider.")
    if load_secrets(registry=cli.registry).operator_key() is None:
        raise MemoryUseError("fleet memory needs the operator's key, and $FLEET_SECRETS has none",
                             hint="Add identities.operator to the secrets file "
                                  "(`fleet keys` makes one).")
    return client(cli, agent)


def default_peer(cli: CliContext, peer: str | None) -> str:
    """The peer a conversation is with: as given, else the sender `fleet ask` uses."""
    return peer or (cli.registry.by_role("orchestrator") or list(cli.registry))[0].name


def checked_peer(value: str | None) -> str | None:
    """``--peer``: a name, checked before anything is sent; else a usage error naming the
    rule and the value cut short."""
    if value is not None and NAME_RE.fullmatch(value) is None:
        raise click.BadParameter(f"{shown(value)} is not {PEER_RULE}")
    return value


conversation_argument = click.argument(
    "conversation", callback=lambda ctx, param, value: checked_id(value))
peer_option = click.option(
    "--peer", envvar="FLEET_AGENT", callback=lambda ctx, param, value: checked_peer(value),
    help="Who the conversation is with (default: $FLEET_AGENT, else the first orchestrator: "
         "the sender `fleet ask` uses).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def memory() -> None:
    """The conversations the agents' built-in runtimes remember (the operator only)."""


@memory.command("list")
@click.argument("agent")
@json_option
@pass_cli
def list_conversations(cli: CliContext, agent: str, as_json: bool) -> None:
    """AGENT's remembered conversations, the latest first: peer, conversation, turns, last
    turn."""
    with operator_client(cli, agent) as gateway:
        found: list[dict[str, Any]] = gateway.call("GET", "/memory")["conversations"]
    if as_json:
        click.echo(json.dumps(found))
        return
    if not found:
        click.echo(f"{agent} remembers no conversations.")
    for item in found:
        click.echo(f"{item['peer']:<12} {json.dumps(item['conversation'])}  "
                   f"{item['turns']} turn(s)  last {utc_timestamp(item['last_at'])}")


@memory.command()
@click.argument("agent")
@conversation_argument
@peer_option
@json_option
@pass_cli
def show(cli: CliContext, agent: str, conversation: str, peer: str | None,
         as_json: bool) -> None:
    """CONVERSATION's turns on AGENT, oldest first: each prompt and its answer."""
    peer = default_peer(cli, peer)
    with operator_client(cli, agent) as gateway:
        found: list[dict[str, Any]] = gateway.call("GET", "/memory/turns", {
            "peer": peer, "conversation": conversation})["turns"]
    if as_json:
        click.echo(json.dumps(found))
        return
    if not found:
        click.echo(f"{agent} remembers no turns of conversation {conversation!r} with {peer}.")
    for turn in found:
        click.echo(f"#{turn['seq']} {utc_timestamp(turn['at'])} request {turn['request_id']}")
        click.echo(f"  {peer}: {turn['prompt']}")
        click.echo(f"  {agent}: {turn['answer']}")


@memory.command()
@click.argument("agent")
@conversation_argument
@peer_option
@click.confirmation_option(prompt="Forget this conversation for good?")
@pass_cli
def forget(cli: CliContext, agent: str, conversation: str, peer: str | None) -> None:
    """Delete CONVERSATION's turns on AGENT (nothing else of the agent changes)."""
    peer = default_peer(cli, peer)
    with operator_client(cli, agent) as gateway:
        count = gateway.call("DELETE", "/memory", {"peer": peer,
                                                   "conversation": conversation})["forgotten"]
    if count:
        click.echo(f"{agent} forgot {count} turn(s) of conversation {conversation!r} with "
                   f"{peer}.")
    else:
        click.echo(f"{agent} kept no turns of conversation {conversation!r} with {peer}: "
                   "nothing to forget.")
