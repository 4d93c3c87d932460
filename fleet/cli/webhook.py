"""``fleet webhook serve`` (owned by the webhook work)."""

import click


@click.group()
def webhook() -> None:
    """Run the deploy webhook receiver."""
