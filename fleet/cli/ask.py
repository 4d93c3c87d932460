"""``fleet ask --capability X "PROMPT"``: ask a healthy agent with a capability, print its
model's answer."""

from __future__ import annotations

import json

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.secrets import load_secrets
from fleet.node.runtime.ask import ask as ask_agent
from fleet.node.runtime.memory import CONVERSATION_RULE, is_conversation, shown


def checked_id(value: str | None) -> str | None:
    """A conversation id (``fleet ask --conversation``, ``fleet memory show|forget``), checked
    before anything is sent; else a usage error naming the rule and the value cut short."""
    if value is not None and not is_conversation(value):
        raise click.BadParameter(f"{shown(value)} is not {CONVERSATION_RULE}")
    return value


@click.command()
@click.option("-c", "--capability", required=True, help="Capability the answering agent has.")
@click.argument("prompt")
@click.option("--from", "sender", envvar="FLEET_AGENT",
              help="Asking agent (default: $FLEET_AGENT, else the first orchestrator).")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer as JSON.")
@click.option("--conversation", metavar="ID", callback=lambda ctx, param, value: checked_id(value),
              help="Continue conversation ID: the answering agent sends its earlier turns "
                   "with the prompt and remembers this one (see `fleet memory`).")
@pass_cli
def ask(cli: CliContext, capability: str, prompt: str, sender: str | None, timeout: float,
        as_json: bool, conversation: str | None) -> None:
    """Send PROMPT to a healthy agent declaring the capability (load spread among them; sent
    once more to another if it dies) and print the answer."""
    keys = load_secrets(registry=cli.registry).private_keys()
    answer = ask_agent(cli.registry, keys, capability, prompt, sender, timeout,
                       conversation=conversation)
    if as_json:
        click.echo(json.dumps({"agent": answer.agent, "correlation_id": answer.correlation_id,
                               "asked": list(answer.asked), "payload": answer.payload}))
        return
    payload = answer.payload if isinstance(answer.payload, dict) else {"text": answer.payload}
    if payload.get("error"):
        raise click.ClickException(f"{answer.agent} answered with an error: {payload['error']}")
    click.echo(f"{answer.agent}: {payload.get('text', '')}")
