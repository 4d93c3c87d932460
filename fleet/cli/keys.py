"""``fleet keys ...``: list, rotate and retire the bus keys (Ed25519) in the secrets file."""

from __future__ import annotations

import click

from bus.keys import IDENTITIES, private_keys
from fleet.cli.context import CliContext, pass_cli
from fleet.control.keyrotation import retire, rotate, secrets_file
from fleet.control.secrets import BUS_KEY, SECRETS_ENV, load_secrets
from fleet.core.errors import RegistryError
from fleet.core.registry import Registry

SECRETS_OPTION = click.option("--secrets", "secrets", envvar=SECRETS_ENV,
                              type=click.Path(dir_okay=False),
                              help=f"Secrets file (default: ${SECRETS_ENV}).")


def registry_or_none(cli: CliContext) -> Registry | None:
    """The registry when there is one (its sealed secrets file holds the agents' keys), else
    None: the keys live in the local secrets file alone."""
    try:
        return cli.registry
    except RegistryError:
        return None


@click.group()
def keys() -> None:
    """List, rotate and retire bus signing keys (agents, operator, receiver)."""


@keys.command("list")
@SECRETS_OPTION
@pass_cli
def list_keys(cli: CliContext, secrets: str | None) -> None:
    """Each agent's and identity's key ids (public), the one it signs with first."""
    found = load_secrets(secrets_file(secrets), registry=registry_or_none(cli))
    for name, text in sorted(found.private_keys().items()):
        ids = [key.keyid for key in private_keys(name, text)]
        kind = "identity" if name in IDENTITIES and name not in found.agents else "agent"
        click.echo(f"{name} ({kind}): signs with {ids[0]}"
                   + (f"; also trusted: {', '.join(ids[1:])}" if ids[1:] else ""))


@keys.command("rotate")
@click.argument("name")
@SECRETS_OPTION
@pass_cli
def rotate_key(cli: CliContext, name: str, secrets: str | None) -> None:
    """Add a new bus key for NAME (an agent, operator or receiver) beside its current one."""
    keyid = rotate(secrets_file(secrets), name, registry_or_none(cli))
    click.echo(f"added {keyid} to {name}'s {BUS_KEY}; it still signs with its old key.")
    click.echo(f"Next: `fleet deploy` (every gateway trusts both keys), then "
               f"`fleet keys retire {name}` and `fleet deploy` again.")


@keys.command("retire")
@click.argument("name")
@SECRETS_OPTION
@pass_cli
def retire_key(cli: CliContext, name: str, secrets: str | None) -> None:
    """Remove NAME's oldest bus key: it signs with the next one after the next deploy."""
    keyid = retire(secrets_file(secrets), name, registry_or_none(cli))
    click.echo(f"retired {keyid}; run `fleet deploy`: {name} then signs with its new key and "
               "no gateway trusts the old one.")
