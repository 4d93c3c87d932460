"""``fleet runs [--json]`` and ``fleet runs show ID``: the records of webhook deploy runs.

Records come from the receiver's SQLite under ``FLEET_STATE_DIR`` (on the receiver's host),
or from its HTTP API with ``--url`` (and the read token).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fleet.webhook.client import fetch
from fleet.webhook.config import DEFAULT_STATE_DIR
from fleet.webhook.db import connect
from fleet.webhook.records import get_run, page_runs


def source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--token`` and ``--state-dir``: where the records are read from."""
    for option in reversed([
        click.option("--url", envvar="FLEET_WEBHOOK_URL",
                     help="Read over HTTP from this receiver (e.g. http://HOST:9876)."),
        click.option("--token", envvar="FLEET_READ_TOKEN",
                     help="Read token for --url (default: $FLEET_READ_TOKEN)."),
        click.option("--state-dir", envvar="FLEET_STATE_DIR", default=DEFAULT_STATE_DIR,
                     show_default=True, type=click.Path(file_okay=False),
                     help="Receiver state dir holding webhook.sqlite3 (without --url)."),
    ]):
        command = option(command)
    return command


@click.group(invoke_without_command=True)
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True,
              help="How many runs, newest first.")
@click.option("--before", type=click.IntRange(1, 2**63 - 1), default=None, metavar="ID",
              help="Only runs older than run ID (the next page).")
@click.pass_context
def runs(ctx: click.Context, url: str | None, token: str | None, state_dir: str,
         as_json: bool, limit: int, before: int | None) -> None:
    """List webhook deploy runs, newest first; `fleet runs show ID` for one run."""
    if ctx.invoked_subcommand is not None:
        return
    if url:
        query: dict[str, Any] = {"limit": limit, **({"before": before} if before else {})}
        page = fetch(url, "/runs", token, query)
        records, next_before = page["runs"], page.get("next_before")
    else:
        conn = connect(Path(state_dir) / "webhook.sqlite3", create=False)
        try:
            records, next_before = page_runs(conn, limit=limit, before=before)
        finally:
            conn.close()
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    click.echo(f"{'ID':>5}  {'STATUS':<11} {'KIND':<8} {'TAG':<10} {'SHA':<12} {'PUSHER':<12} "
               f"{'QUEUED':<24} SUMMARY")
    for run in records:
        kind = "rollback" if run.get("rollback") else "deploy"
        click.echo(f"{run['id']:>5}  {run['status']:<11} {kind:<8} {run['tag']:<10} "
                   f"{run['sha'][:12]:<12} {run['pusher'][:12]:<12} {run['queued_at']:<24} "
                   f"{run['summary']}")
    if next_before is not None:
        click.echo(f"older runs: fleet runs --before {next_before}")


@runs.command()
@click.argument("run_id", type=int)
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print the run (with its log) as JSON.")
def show(run_id: int, url: str | None, token: str | None, state_dir: str,
         as_json: bool) -> None:
    """Show run RUN_ID: push, times, per-host results, health and the log's tail."""
    if url:
        run = fetch(url, f"/runs/{run_id}", token)
    else:
        conn = connect(Path(state_dir) / "webhook.sqlite3", create=False)
        try:
            run = get_run(conn, run_id)
        finally:
            conn.close()
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo(format_run(run))


def _region_rank(region_of: dict[str, str], host: str) -> int:
    """Position of ``host``'s region among the run's regions in stage order (hosts of no
    stage last)."""
    order = list(dict.fromkeys(region_of.values()))
    return order.index(region_of[host]) if host in region_of else len(order)


def format_run(run: dict[str, Any]) -> str:
    """One run for people."""
    lines = [
        f"run {run['id']}: {run['status']}",
        f"tag {run['tag']} claimed at {run['sha']} by {run['pusher']} via {run['forge']} "
        f"(delivery {run['delivery_id']})",
        f"resolved to {run.get('commit_sha') or '-'}, release {run.get('release') or '-'}, "
        f"fleet run {run.get('fleet_run_id') or '-'}",
        f"queued {run['queued_at']}, started {run['started_at'] or '-'}, "
        f"ended {run['ended_at'] or '-'}, exit status {run['exit_status']}",
        f"summary: {run['summary'] or '-'}",
    ]
    if run.get("rollback"):
        lines.append(f"rollback: the tag was moved back from release {run['rollback_from']}")
    if run.get("superseded_by"):
        lines.append(f"superseded by run {run['superseded_by']}")
    if run.get("covers"):
        lines.append(f"covers runs {', '.join(map(str, run['covers']))}")
    region_of: dict[str, str] = {}
    for stage in run.get("stages", []):
        outcome = ", ".join(f"{host} {status}" for host, status in stage.get("outcome", {}).items())
        region = f" ({stage['region']})" if stage.get("region") else ""
        region_of.update(dict.fromkeys(stage.get("hosts", []), stage.get("region") or ""))
        lines.append(f"  stage {stage.get('stage')}{region}: {outcome or '-'}")
    shown = ""
    for host, result in sorted(run["hosts"].items(), key=lambda item: _region_rank(
            region_of, item[0])):
        if any(region_of.values()) and region_of.get(host, "") != shown:
            shown = region_of.get(host, "")
            lines.append(f"  region {shown or '-'}:")
        reason = result.get("reason") or "; ".join(result.get("problems") or [])
        restarted = "restarted" if result.get("restarted") else "not restarted"
        lines.append(f"  {host:<16} {result.get('status', '?'):<11} {result.get('release')} "
                     f"{len(result.get('changed') or [])} changed, {restarted}"
                     f"{'; ' + reason if reason else ''}")
    for item in run["health"]:
        lines.append(f"  health {item.get('agent')}: "
                     f"{'ok' if item.get('healthy') else 'FAIL'}")
    if run.get("log"):
        lines += [f"--- log {run['log_path']} ---", run["log"].rstrip()]
    return "\n".join(lines)
