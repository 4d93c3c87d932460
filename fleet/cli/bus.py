"""``fleet bus ...`` (owned by the bus work)."""

import click


@click.group()
def bus() -> None:
    """Send, tail and inspect inter-agent bus messages."""
