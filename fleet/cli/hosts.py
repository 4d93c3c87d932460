"""``fleet hosts scan``: record the fleet's SSH host keys (first contact is explicit)."""

from __future__ import annotations

import json

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.hosts import known_hosts_path, scan


@click.group()
def hosts() -> None:
    """SSH host keys of the fleet's hosts."""


@hosts.command("scan")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
@pass_cli
def scan_cmd(cli: CliContext, names: tuple[str, ...], as_json: bool) -> None:
    """Record the host keys of agents NAMES (default: all) in the registry's known_hosts and
    print their SHA256 fingerprints; check them before deploying."""
    registry = cli.registry
    path, keys = scan(registry, names)
    if as_json:
        click.echo(json.dumps({"known_hosts": str(path), "keys": [
            {"agent": key.agent, "host": key.pattern, "type": key.key_type,
             "fingerprint": key.fingerprint, "status": key.status} for key in keys]}, indent=2))
        return
    width = max(len(key.agent) for key in keys)
    for key in keys:
        click.echo(f"{key.agent:<{width}}  {key.pattern}  {key.key_type}  {key.fingerprint}  "
                   f"({key.status})")
    click.echo(f"Recorded in {path}. Compare each fingerprint with the server's own "
               "(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on its console).")
    if known_hosts_path(registry) is None:
        click.echo(f"The registry sets no known_hosts: add `known_hosts: {path.name}` under "
                   f"`fleet:` in {registry.path}; until then deploy and status refuse to "
                   "connect.")
