"""``fleet init``: a starter registry, souls and a secrets file with fresh keys."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.init import DEFAULT_AGENTS, DEFAULT_SECRETS, init_fleet
from fleet.control.secrets import SECRETS_ENV
from fleet.core.registry import resolve_registry_path


@click.command("init")
@click.argument("agents", nargs=-1)
@click.option("--secrets", "secrets_file", envvar=SECRETS_ENV, type=click.Path(dir_okay=False),
              help=f"Secrets file to write (default: ${SECRETS_ENV}, else ./{DEFAULT_SECRETS}).")
@click.option("--secrets-only", is_flag=True,
              help="Write only the secrets file, for the agents of the existing registry.")
@pass_cli
def init(cli: CliContext, agents: tuple[str, ...], secrets_file: str | None,
         secrets_only: bool) -> None:
    """Write a starter registry (AGENTS: the first the orchestrator, the others workers;
    default: orchestrator worker-1 worker-2), their souls, and a secrets file (0600) with
    fresh keys: an Ed25519 bus key per agent, for the operator and for the webhook receiver,
    the webhook secret and the read token. Never overwrites
    a file."""
    if secrets_only and agents:
        raise click.UsageError("--secrets-only takes the agents from the registry: pass no "
                               "AGENTS")
    registry = resolve_registry_path(cli.registry_path)
    secrets = Path(secrets_file or DEFAULT_SECRETS)
    result = init_fleet(registry, secrets, list(agents) or list(DEFAULT_AGENTS), secrets_only)
    if result.registry is not None:
        click.echo(f"Wrote {result.registry} ({len(result.agents)} agents: "
                   f"{', '.join(result.agents)}) and their souls under "
                   f"{result.souls[0].parent}/.")
    click.echo(f"Wrote {result.secrets} (mode 0600): an Ed25519 bus key for each of "
               f"{', '.join(result.agents)}, the operator and the webhook receiver, the webhook "
               "secret and the read token.")
    click.echo("Next:")
    steps = []
    if result.registry is not None:
        steps.append(f"edit {result.registry}: each agent's host, model and ssh_user "
                     "(`become: sudo` under `fleet:` for a non-root user), `repo_url` for the "
                     "webhook receiver; then `fleet registry validate`")
        steps.append("edit the souls: what each agent is and does")
    steps += [f"keep {result.secrets} out of git, add API keys to it, and "
              f"`export {SECRETS_ENV}={result.secrets.resolve()}`",
              "`fleet hosts scan` to pin the servers' host keys (compare the fingerprints)",
              "`fleet deploy --dry --diff`, then `fleet deploy`"]
    for number, step in enumerate(steps, 1):
        click.echo(f"  {number}. {step}")
