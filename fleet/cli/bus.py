"""``fleet bus ...``: send, tail and inspect bus messages through the agents' gateways.

Requests are signed with the operator's key (``identities.operator`` in ``$FLEET_SECRETS``),
which every gateway lets use its own inbox, outbox and stats; without one, with
``$FLEET_BUS_PRIVATE_KEY`` when it is the agent's own (``$FLEET_AGENT``: on its node).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import click

from bus.client import BusClient, GatewayError
from bus.schema import MAX_TTL
from fleet.cli.context import CliContext, pass_cli
from fleet.control.secrets import BUS_KEY, load_secrets

PAGE = 1000


def client(cli: CliContext, agent: str) -> BusClient:
    """A signed client for ``agent``'s gateway: the operator's key, else the agent's own from
    the environment."""
    operator = load_secrets(registry=cli.registry).operator_key()
    if operator is not None:
        return BusClient.for_agent(cli.registry, agent, operator)
    own = os.environ.get(BUS_KEY) if os.environ.get("FLEET_AGENT") == agent else None
    return BusClient.for_agent(cli.registry, agent, {agent: own} if own else {})


def parse_payload(text: str) -> Any:
    """PAYLOAD as JSON, or as a plain string when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_message(message: dict[str, Any]) -> str:
    """One inbox message on one line."""
    extra = "".join(f" {name}={message[name]}" for name in ("correlation_id", "reply_to")
                    if message.get(name))
    return (f"#{message['seq']} {message['timestamp']} {message['from']} -> {message['to']} "
            f"{message['type']} id={message['id']}{extra} {json.dumps(message['payload'])}")


@click.group()
def bus() -> None:
    """Send, tail and inspect inter-agent bus messages."""


@bus.command()
@click.argument("to")
@click.argument("type", type=click.Choice(["request", "response", "broadcast", "alert"]))
@click.argument("payload")
@click.option("--from", "sender", envvar="FLEET_AGENT",
              help="Sending agent (default: $FLEET_AGENT, else the first orchestrator).")
@click.option("--correlation-id", help="Correlation id (required for a response).")
@click.option("--reply-to", help="Agent that should receive the response.")
@click.option("--ttl", type=click.IntRange(1, MAX_TTL),
              help="Seconds before the message is given up.")
@click.option("--id", "message_id", help="Message id (default: a new UUID). The same id sent "
                                         "again is queued once: retrying is safe.")
@pass_cli
def send(cli: CliContext, to: str, type: str, payload: str, sender: str | None,
         correlation_id: str | None, reply_to: str | None, ttl: int | None,
         message_id: str | None) -> None:
    """Queue PAYLOAD (JSON, or text) from --from to TO ('*' for a broadcast)."""
    if sender is None:
        orchestrators = cli.registry.by_role("orchestrator") or list(cli.registry)
        sender = orchestrators[0].name
    with client(cli, sender) as gateway:
        queued = gateway.send(None if to == "*" else to, type, parse_payload(payload),
                              correlation_id=correlation_id, reply_to=reply_to, ttl=ttl,
                              id=message_id or str(uuid.uuid4()))
    verb = "queued" if queued.get("status", "queued") == "queued" else "already queued"
    click.echo(f"{verb} {queued['id']} in {sender}'s outbox for "
               f"{', '.join(queued['recipients']) or 'nobody'}")


@bus.command()
@click.argument("agent")
@click.option("--since", type=click.IntRange(0), default=0, help="Start after inbox position.")
@click.option("--type", "kind", type=click.Choice(["request", "response", "broadcast", "alert"]),
              help="Only messages of this type.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_cli
def tail(cli: CliContext, agent: str, since: int, kind: str | None, follow: bool,
         as_json: bool) -> None:
    """Print AGENT's inbox messages, oldest first (--follow: keep printing new ones, also
    across restarts of the gateway)."""
    with client(cli, agent) as gateway:
        while True:
            try:
                page = gateway.messages(since=since, limit=PAGE, type=kind)
            except GatewayError as exc:
                if not follow or not exc.retryable:
                    raise
                time.sleep(1)  # the gateway restarts: pick up where we were
                continue
            for message in page["messages"]:
                click.echo(json.dumps(message) if as_json else format_message(message))
            since = page["next"]
            if len(page["messages"]) == PAGE:
                continue
            if not follow:
                return
            time.sleep(0.5)


@bus.command("dead-letters")
@click.argument("agent")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def dead_letters(cli: CliContext, agent: str, limit: int, as_json: bool) -> None:
    """Messages AGENT gave up delivering, with why."""
    with client(cli, agent) as gateway:
        letters = gateway.dead_letters(limit)
    if as_json:
        click.echo(json.dumps(letters, indent=2))
        return
    for letter in letters:
        click.echo(f"#{letter['seq']} {letter['id']} -> {letter['to']} "
                   f"({letter['message']['type']}) after "
                   f"{letter['attempts']} attempts: {letter['reason']}"
                   + (f" [{letter['last_error']}]" if letter["last_error"] else ""))
    if not letters:
        click.echo(f"no dead letters on {agent}")


@bus.command()
@click.argument("agent")
@click.argument("seqs", nargs=-1, type=click.IntRange(1))
@click.option("--all", "everything", is_flag=True, help="Re-send every dead letter.")
@pass_cli
def redrive(cli: CliContext, agent: str, seqs: tuple[int, ...], everything: bool) -> None:
    """Re-send AGENT's dead letters SEQS (numbers from `dead-letters`), or --all."""
    if bool(seqs) == everything:
        raise click.UsageError("give dead-letter numbers (SEQS) or --all, not both or neither")
    with client(cli, agent) as gateway:
        moved = gateway.redrive(None if everything else list(seqs))
    for letter in moved:
        click.echo(f"queued {letter['id']} -> {letter['to']} again")
    click.echo(f"{len(moved)} dead letter(s) of {agent} queued again")


@bus.command()
@click.argument("agent")
@pass_cli
def stats(cli: CliContext, agent: str) -> None:
    """AGENT's bus counters: outbox depth, delivered, retried, dead-lettered, inbox."""
    with client(cli, agent) as gateway:
        found = gateway.stats()
    for name, value in found.items():
        click.echo(f"{name}: {value}")
