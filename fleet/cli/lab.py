"""``fleet lab up|down|status|ssh`` (owned by the lab work)."""

import click


@click.group()
def lab() -> None:
    """Run a local lab fleet of systemd-nspawn nodes."""
