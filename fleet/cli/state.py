"""``fleet state ...``: list, back up and restore an agent's state (thin over
:mod:`fleet.control.state`)."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.cli.context import CliContext, pass_cli


@click.group()
def state() -> None:
    """Snapshots of an agent's state dir: list, back up to this machine, restore."""


@state.command("list")
@click.argument("agent")
@pass_cli
def list_command(cli: CliContext, agent: str) -> None:
    """The snapshots of AGENT's state kept on its node, newest first."""
    from fleet.control.state import list_snapshots

    found = list_snapshots(cli.registry.get(agent), cli.registry)
    if not found:
        click.echo(f"{agent}: no snapshots")
    for item in found:
        click.echo(f"{item['id']}  {item['time']}  release {item['release_before'] or '-'} -> "
                   f"{item['release_after'] or '-'}  {item['files']} files, "
                   f"{item['bytes']} bytes")


@state.command("backup")
@click.argument("agent")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder for the backup file (AGENT-ID.tar, mode 0600).")
@click.option("--snapshot", "snapshot_id", metavar="ID",
              help="Back up this snapshot (default: take a new one now).")
@pass_cli
def backup_command(cli: CliContext, agent: str, to: Path, snapshot_id: str | None) -> None:
    """Snapshot AGENT's state and pull it here, checked against its manifest's sha256s."""
    from fleet.control.state import backup

    done = backup(cli.registry.get(agent), cli.registry, to, snapshot_id)
    files = [entry for entry in done.manifest["files"] if entry["type"] == "file"]
    click.echo(f"{done.path}: snapshot {done.snapshot}, {len(files)} files checked "
               f"(sha256 {done.sha256})")


@state.command("restore")
@click.argument("agent")
@click.option("--snapshot", "snapshot_id", metavar="ID", help="A snapshot on the node.")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, exists=True,
                                                     path_type=Path),
              help="A backup file from `fleet state backup`.")
@pass_cli
def restore_command(cli: CliContext, agent: str, snapshot_id: str | None,
                    from_file: Path | None) -> None:
    """Stop AGENT, put its state back as a snapshot or backup, start it and verify it."""
    from fleet.control.state import restore

    done = restore(cli.registry.get(agent), cli.registry, snapshot_id, from_file)
    click.echo(f"{agent}: state restored from snapshot {done['snapshot']}; healthy")
