"""``fleet deploy`` and ``fleet rollback`` (owned by the deploy work)."""

import click


@click.command()
def deploy() -> None:
    """Deploy the fleet with pyinfra (not implemented yet)."""
    raise click.ClickException("fleet deploy is not implemented yet")


@click.command()
def rollback() -> None:
    """Roll an agent back to an earlier release (not implemented yet)."""
    raise click.ClickException("fleet rollback is not implemented yet")
