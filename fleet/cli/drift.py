"""``fleet drift``: per host, what a deploy would change now, with diffs; exit 1 on drift."""

from __future__ import annotations

import json

import click

from fleet.cli.context import CliContext, pass_cli


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--limit", multiple=True, metavar="NAME",
              help="Only these agents or groups (role, capability); repeatable.")
@click.option("--verbose", is_flag=True, help="Also show pyinfra's output of the dry run.")
@pass_cli
def drift(cli: CliContext, as_json: bool, limit: tuple[str, ...], verbose: bool) -> None:
    """Compare every agent with what the registry and the repository require (a dry run of the
    real deploy); list each operation that would change, with file diffs. Exit 1 on drift."""
    from fleet.control.drift import check_drift

    report = check_drift(cli.registry, limit, click.echo if verbose else lambda _: None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        drifted = report.drifted
        click.echo(f"==> drift check {report.run_id}: "
                   + (f"{len(drifted)} of {len(report.hosts)} host(s) drifted"
                      if drifted else f"all {len(report.hosts)} host(s) as deployed"))
        for host in drifted:
            if host.status != "planned":
                click.echo(f"    {host.agent}: not checked: {host.reason}")
                continue
            click.echo(f"    {host.agent}: {len(host.operations)} operation(s) would change")
            for operation in host.operations:
                click.echo(f"      {operation}")
            for path, lines in host.diffs.items():
                click.echo(f"      {path}:")
                click.echo("\n".join(f"        {line}" for line in lines))
    if report.drifted:
        raise click.exceptions.Exit(1)
