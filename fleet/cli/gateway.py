"""``fleet gateway serve`` (owned by the bus work)."""

import click


@click.group()
def gateway() -> None:
    """Run an agent gateway locally."""
