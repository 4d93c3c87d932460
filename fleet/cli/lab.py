"""``fleet lab up|down|status|ssh``: a local lab fleet of systemd-nspawn nodes."""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import replace
from types import FrameType

import click

from fleet import lab as lab_api
from fleet.cli.context import CliContext, pass_cli
from fleet.cli.progress import LabProgress
from fleet.core.validate import USER_NAME_FORM, USER_NAME_RE
from fleet.lab import model as lab_model
from fleet.lab.paths import DEFAULT_LAB, LAB_ENV
from fleet.lab.rootfs import SUITES

lab_option = click.option("--lab", "lab_name", envvar=LAB_ENV, default=DEFAULT_LAB,
                          show_default=True, help="Lab name (also from $FLEET_LAB).")


def _progress() -> LabProgress:
    """The lab's progress sink: live steps on a terminal, plain lines otherwise."""
    return LabProgress()


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


def _user_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--ssh-user``: a POSIX user name, matched in full."""
    if value is not None and not USER_NAME_RE.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a user name ({USER_NAME_FORM})")
    return value


def _repo_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--repo-url``: no leading ``-`` and no control character (git gets it as a value)."""
    if value is not None and (value.startswith("-") or not value.isprintable()):
        raise click.BadParameter(f"{value!r} is not a repository URL (it may not start with "
                                 "'-' or hold a control character)")
    return value


def _releases(ctx: click.Context, param: click.Parameter,
              value: tuple[str, ...]) -> dict[str, str]:
    """``--release [NAME=]SUITE`` options as ``{NAME or "": SUITE}``."""
    releases: dict[str, str] = {}
    for item in value:
        name, _, suite = item.rpartition("=")
        if suite not in SUITES:
            raise click.BadParameter(f"{suite!r} is not a Debian release the lab boots "
                                     f"({', '.join(SUITES)})")
        releases[name] = suite
    return releases


def _regions(ctx: click.Context, param: click.Parameter,
             value: str | None) -> list[tuple[str, int]] | None:
    """``--regions eu:3,us:3`` as ``[("eu", 3), ("us", 3)]``."""
    if value is None:
        return None
    from fleet.core.errors import LabError
    from fleet.lab.regions import parse_spec
    try:
        return parse_spec(value)
    except LabError as exc:
        raise click.BadParameter(f"{exc} ({exc.hint})") from None


@click.group()
def lab() -> None:
    """Run a local lab fleet of systemd-nspawn nodes (needs root)."""


@lab.command()
@click.option("-n", "--nodes", type=click.IntRange(min=1), default=None,
              help="Number of nodes (default: one per registry agent; extra ones are workers).")
@click.option("--ssh-user", metavar="USER", callback=_user_name,
              help="Reach every node as USER (passwordless sudo; root logins refused); the "
                   "lab registry says `become: sudo`.")
@click.option("--repo-url", metavar="URL", callback=_repo_url,
              help="`fleet.repo_url` of the lab registry (the webhook receiver's fleet repo), "
                   "instead of the registry's.")
@click.option("--release", "releases", metavar="[NAME=]SUITE", multiple=True,
              callback=_releases,
              help="Debian release the nodes boot: bookworm (default) or trixie; NAME=SUITE "
                   "for one node (repeat for several).")
@click.option("--model", "with_model", is_flag=True,
              help="Also serve the lab model (through llama.cpp's OpenAI-compatible server) "
                   "on the bridge; agents without a provider URL use it. The first time "
                   "builds and caches the server (about 5 minutes).")
@click.option("--model-name", type=click.Choice(sorted(lab_model.MODELS)),
              envvar=lab_model.MODEL_ENV, default=None,
              help="The model --model serves: smollm2 (SmolLM2 135M Instruct, follows the "
                   "soul; the default) or gemma (Gemma 3 270M, a base model). Also from "
                   f"${lab_model.MODEL_ENV}.")
@click.option("--regions", "regions", metavar="NAME:N,...", callback=_regions,
              help="Regions and their node counts, e.g. eu:3,us:3,ap:3 (the lab registry "
                   "lists them as fleet.regions, in this order).")
@click.option("--latency", "latency_ms", type=click.FloatRange(min=0, max=10000), default=0,
              metavar="MS", help="Added round-trip time between regions and to the "
                                 "controller (tc netem inside the nodes' namespaces, or a "
                                 "userspace delay line where the kernel lacks netem).")
@click.option("--jitter", "jitter_ms", type=click.FloatRange(min=0, max=10000), default=0,
              metavar="MS", help="Jitter of the added latency.")
@lab_option
@pass_cli
def up(cli: CliContext, nodes: int | None, ssh_user: str | None, repo_url: str | None,
       releases: dict[str, str], with_model: bool, model_name: str | None,
       regions: list[tuple[str, int]] | None, latency_ms: float, jitter_ms: float,
       lab_name: str) -> None:
    """Boot one node per registry agent and write the lab registry."""
    if (latency_ms or jitter_ms) and not (regions or cli.registry.regions):
        raise click.UsageError("--latency and --jitter need regions (--regions or the "
                               "registry's fleet.regions)")
    cancel = _cancel_on_signals()  # so an interrupted `up` still cleans up after itself
    registry = cli.registry
    if repo_url:
        registry = replace(registry, repo_url=repo_url)
    path = lab_api.up(registry, nodes=nodes, lab=lab_name, progress=_progress(),
                      cancel=cancel, ssh_user=ssh_user, releases=releases,
                      with_model=with_model, regions=regions, latency_ms=latency_ms,
                      jitter_ms=jitter_ms, model_name=model_name)
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
    """Stop the nodes and the model server; remove their namespaces, mounts and bridge."""
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
    click.echo(f"{'NAME':<20} {'IP':<15} {'REGION':<10} {'RUNNING':<8} PID")
    for node in nodes:
        running = "yes" if node.running else "no"
        click.echo(f"{node.name:<20} {node.ip:<15} {node.region or '-':<10} {running:<8} "
                   f"{node.pid or '-'}")


@lab.command()
@click.argument("region")
@lab_option
def partition(region: str, lab_name: str) -> None:
    """Cut REGION off: its nodes' links go down until `fleet lab heal REGION`."""
    names = lab_api.partition(lab_name, region)
    click.echo(f"Region {region!r} of lab {lab_name!r} is cut off: {', '.join(names)}.")


@lab.command()
@click.argument("region")
@lab_option
def heal(region: str, lab_name: str) -> None:
    """Reconnect REGION after `fleet lab partition REGION`."""
    names = lab_api.partition(lab_name, region, heal=True)
    click.echo(f"Region {region!r} of lab {lab_name!r} is reachable again: {', '.join(names)}.")


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
