"""``fleet lab up|down|status|ssh``: a local lab fleet of systemd-nspawn nodes."""

from __future__ import annotations

import json
import os
import signal
import threading
from types import FrameType

import click

from fleet import lab as lab_api
from fleet.cli.context import CliContext, pass_cli
from fleet.lab.paths import DEFAULT_LAB, LAB_ENV

lab_option = click.option("--lab", "lab_name", envvar=LAB_ENV, default=DEFAULT_LAB,
                          show_default=True, help="Lab name (also from $FLEET_LAB).")


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _cancel_on_signals() -> threading.Event:
    """An event set by the first SIGTERM/SIGINT; a second one acts as usual."""
    cancel = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        click.echo(f"{signal.Signals(signum).name}: stopping and cleaning up the lab ...",
                   err=True)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return cancel


@click.group()
def lab() -> None:
    """Run a local lab fleet of systemd-nspawn nodes (needs root)."""


@lab.command()
@click.option("-n", "--nodes", type=click.IntRange(min=1), default=None,
              help="Number of nodes (default: one per registry agent; extra ones are workers).")
@lab_option
@pass_cli
def up(cli: CliContext, nodes: int | None, lab_name: str) -> None:
    """Boot one node per registry agent and write the lab registry."""
    cancel = _cancel_on_signals()  # so an interrupted `up` still cleans up after itself
    path = lab_api.up(cli.registry, nodes=nodes, lab=lab_name, progress=_progress,
                      cancel=cancel)
    count = len(lab_api.status(lab_name))
    click.echo(f"Lab {lab_name!r} is up with {count} nodes. Point the fleet at it with:")
    click.echo(f"  export FLEET_REGISTRY={path}")
    click.echo(f"Log in with `fleet lab ssh NAME --lab {lab_name}`; "
               f"stop it with `fleet lab down --lab {lab_name}`.")


@lab.command()
@lab_option
@click.option("--all", "all_labs", is_flag=True,
              help="Take down every lab on this machine (except labs a test session holds).")
@click.option("--force", is_flag=True, help="With --all, also labs a test session holds.")
def down(lab_name: str, all_labs: bool, force: bool) -> None:
    """Stop the nodes and remove their namespaces, mounts and bridge."""
    if all_labs:
        names, skipped = lab_api.down_all(include_in_use=force)
        click.echo(f"Labs down: {', '.join(names)}." if names else "No lab was up.")
        if skipped:
            click.echo(f"Skipped labs in use by a running session: {', '.join(skipped)} "
                       "(use --force to take them down too).")
        return
    lab_api.down(lab_name)
    click.echo(f"Lab {lab_name!r} is down.")


@lab.command()
@lab_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(lab_name: str, as_json: bool) -> None:
    """List the lab's nodes: name, IP, running, pid."""
    nodes = lab_api.status(lab_name)
    if as_json:
        click.echo(json.dumps([node.to_dict() for node in nodes], indent=2))
        return
    if not nodes:
        click.echo(f"Lab {lab_name!r} is down.")
        return
    click.echo(f"{'NAME':<20} {'IP':<15} {'RUNNING':<8} PID")
    for node in nodes:
        running = "yes" if node.running else "no"
        click.echo(f"{node.name:<20} {node.ip:<15} {running:<8} {node.pid or '-'}")


@lab.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@lab_option
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(lab_name: str, name: str, command: tuple[str, ...]) -> None:
    """Open an SSH session to node NAME (or run COMMAND there) with the lab key.

    ``--lab`` may also follow NAME; put ``--`` before a COMMAND that starts with options.
    """
    lab_name, command = _lab_after_name(lab_name, command)
    config = lab_api.ssh_config(lab_name)
    known = [node.name for node in lab_api.status(lab_name)]
    if name not in known:
        raise click.ClickException(f"lab {lab_name!r} has no node {name!r} "
                                   f"(nodes: {', '.join(known)})")
    os.execvp("ssh", ["ssh", "-F", str(config), name, *command])


def _lab_after_name(lab_name: str, args: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Take ``--lab X`` / ``--lab=X`` and a ``--`` separator from the front of ``args``."""
    if len(args) >= 2 and args[0] == "--lab":
        lab_name, args = args[1], args[2:]
    elif args and args[0].startswith("--lab="):
        lab_name, args = args[0].split("=", 1)[1], args[1:]
    if args[:1] == ("--",):
        args = args[1:]
    return lab_name, args
