"""``fleet runs`` (owned by the webhook work)."""

import click


@click.group()
def runs() -> None:
    """Read the records of deploy runs."""
