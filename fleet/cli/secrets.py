"""``fleet secrets ...``: the fleet's secrets file kept in the repository, sealed with age to the
recipients the registry lists (``fleet.secrets``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.sealed import IDENTITY_ENV, identity_path
from fleet.control.secrets import SECRETS_ENV, Secrets
from fleet.core.errors import SecretsError

if TYPE_CHECKING:
    from fleet.control.sealed_edit import Sealing


def summary(found: Secrets) -> str:
    """How much a secrets file holds, without a value."""
    return (f"{len(found.fleet)} fleet value(s), {len(found.agents)} agent(s), "
            f"{len(found.identities)} identit(y/ies)")


def report(done: Sealing) -> None:
    """Say whom a seal sealed the file to, and warn about recipients it was not sealed to
    before (a registry change may have added one: check who did)."""
    click.echo(f"sealed {done.path} to {len(done.recipients)} recipient(s): "
               f"{', '.join(done.recipients)}; {summary(done.secrets)}")
    if done.added is None:
        click.echo(f"Note: {done.path} did not record whom it was sealed to before: check "
                   "that every recipient above is meant to read the secrets.", err=True)
    elif done.added:
        click.echo(f"Warning: {len(done.added)} recipient(s) added since the file was last "
                   f"sealed: {', '.join(done.added)}", err=True)
        click.echo("Hint: each can now open the secrets; check who listed them: "
                   "`git log -p -- registry.yaml`, and `fleet secrets recipients remove` a "
                   "stranger (then rotate the secrets).", err=True)


@click.group()
def secrets() -> None:
    """The sealed secrets file in the fleet repository (age; `fleet.secrets` in the
    registry). Every command first removes the plaintext folder of an edit that was killed."""
    from fleet.control.sealed_edit import sweep_edits

    for path in sweep_edits():
        click.echo(f"removed {path}: the plaintext of a killed `fleet secrets edit`", err=True)


@secrets.command()
@click.option("--identity", type=click.Path(dir_okay=False), envvar=IDENTITY_ENV,
              help=f"Where your age identity is kept (default: ${IDENTITY_ENV}, else "
                   "~/.config/sovereign-fleet/age-identity.txt).")
@click.option("--receiver", is_flag=True,
              help="Print the webhook receiver's recipient instead, read over SSH from its "
                   "node (its deploy made its identity there).")
@pass_cli
def init(cli: CliContext, identity: str | None, receiver: bool) -> None:
    """Create your age identity (0600; an existing one is kept) and print its recipient, the
    public key to list in `fleet.secrets.recipients`; with --receiver, print the receiver's."""
    from fleet.control.sealed_edit import init_identity, receiver_recipient

    if receiver:
        click.echo(receiver_recipient(cli.registry))
        click.echo("(the receiver's; add it with `fleet secrets recipients add` and commit)",
                   err=True)
        return
    path = identity_path(identity)
    click.echo(init_identity(path))
    click.echo(f"(identity: {path}; list the line above in registry.yaml under "
               "fleet.secrets.recipients)", err=True)


@secrets.command()
@click.argument("plain", type=click.Path(dir_okay=False, path_type=Path), required=False,
                envvar=SECRETS_ENV)
@pass_cli
def encrypt(cli: CliContext, plain: Path | None) -> None:
    """Seal the plaintext secrets file PLAIN (default: $FLEET_SECRETS) as the registry's
    sealed file. PLAIN is kept: delete it once the sealed file is committed."""
    from fleet.control.sealed_edit import encrypt_plain

    if plain is None:
        raise click.UsageError(f"name the plaintext secrets file (PLAIN or ${SECRETS_ENV})")
    report(encrypt_plain(cli.registry, plain))


@secrets.command()
@pass_cli
def edit(cli: CliContext) -> None:
    """Decrypt into a private file on a memory file system, run $VISUAL / $EDITOR, check the
    result and seal it over the old file (unchanged when the editor fails or the text does
    not check; at a terminal you are asked whether to edit the same text again)."""
    from fleet.control.sealed_edit import edit as edit_sealed
    from fleet.control.sealed_edit import sealed_file

    done = edit_sealed(cli.registry, again=ask_again if sys.stdin.isatty() else None)
    if done is None:
        click.echo(f"{sealed_file(cli.registry).path}: unchanged, not re-sealed")
    else:
        report(done)


def ask_again(problem: SecretsError) -> bool:
    """Show why the edited text does not check and ask whether to edit it again."""
    for line in str(problem).splitlines():
        click.echo(f"Error: {line}", err=True)
    return click.confirm("Edit the same text again? (no: discard the edit)", default=True,
                         err=True)


@secrets.command()
@click.option("--masked", is_flag=True, required=True,
              help="Show the file with every value masked (the only way it is shown).")
@pass_cli
def show(cli: CliContext, masked: bool) -> None:
    """Print the sealed file's YAML with every value masked."""
    from fleet.control.sealed_edit import show_masked

    click.echo(show_masked(cli.registry), nl=False)


@secrets.command()
@pass_cli
def check(cli: CliContext) -> None:
    """Open the sealed file with your identity and check it; exit 1 naming the problem."""
    from fleet.control.sealed_edit import check as check_sealed
    from fleet.control.sealed_edit import sealed_file

    found = check_sealed(cli.registry)
    click.echo(f"{sealed_file(cli.registry).path}: ok: {summary(found)}")


@secrets.group()
def recipients() -> None:
    """Who the sealed file is sealed to (re-seals it on every change)."""


@recipients.command("list")
@pass_cli
def list_recipients(cli: CliContext) -> None:
    """The recipients the registry lists."""
    from fleet.control.sealed_edit import sealed_file

    for value in sealed_file(cli.registry).recipients:
        click.echo(value)


@recipients.command()
@click.argument("recipient")
@pass_cli
def add(cli: CliContext, recipient: str) -> None:
    """List RECIPIENT (age1...) in the registry and re-seal the file to every recipient."""
    from fleet.control.sealed_edit import sealed_file, set_recipients

    listed = sealed_file(cli.registry).recipients
    if recipient in listed:
        click.echo(f"{recipient} is listed already")
        return
    set_recipients(cli.registry, [*listed, recipient])
    click.echo(f"added {recipient}; re-sealed to {len(listed) + 1} recipient(s)")


@recipients.command()
@click.argument("recipient")
@click.option("--force", is_flag=True,
              help="Also when it leaves none of your own identity's recipients (you could no "
                   "longer open the file).")
@pass_cli
def remove(cli: CliContext, recipient: str, force: bool) -> None:
    """Drop RECIPIENT from the registry and re-seal the file to the rest. Rotate the values
    it could read: it may have kept a copy."""
    from fleet.control.sealed_edit import sealed_file, set_recipients

    listed = sealed_file(cli.registry).recipients
    if recipient not in listed:
        raise click.ClickException(f"{recipient} is not a recipient")
    set_recipients(cli.registry, [value for value in listed if value != recipient], force=force)
    click.echo(f"removed {recipient}; re-sealed to {len(listed) - 1} recipient(s). Rotate "
               "the secrets it could read: an old copy of the file still opens with its key.")
