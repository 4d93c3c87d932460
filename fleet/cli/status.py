"""``fleet status`` (owned by the status work)."""

import click


@click.command()
def status() -> None:
    """SSH and health of every agent (not implemented yet)."""
    raise click.ClickException("fleet status is not implemented yet")
