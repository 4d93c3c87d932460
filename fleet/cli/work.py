"""``fleet work ...``: the fleet's autonomous work from the operator's seat (thin over
:mod:`fleet.control.schedules` and :mod:`fleet.control.work`). Every value that comes from
a node is printed escaped (:func:`~fleet.core.registry.printable`)."""

from __future__ import annotations

import json
from typing import Any

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.core.registry import printable
from fleet.node.work.items import DEFAULT_LIMIT, MAX_LIMIT, STATES, WorkItem

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def work() -> None:
    """Autonomous work: the agents' schedules and the orchestrator's work items."""


@work.command("run-now")
@click.argument("agent")
@click.argument("schedule")
@pass_cli
def run_now_command(cli: CliContext, agent: str, schedule: str) -> None:
    """Run AGENT's SCHEDULE now, as when its timer fires: its request goes into AGENT's inbox
    (or, with a capability, is routed by AGENT's runtime); the orchestrator's `work-intake`
    takes in the forges' issues and routes the queued items."""
    from fleet.control.schedules import run_now
    from fleet.core.work_config import INTAKE_SCHEDULE

    started = run_now(cli.registry, agent, schedule)
    if started.schedule.name == INTAKE_SCHEDULE and not started.schedule.prompt:
        click.echo(f"{started.agent}: work intake ran ({started.unit}): the forges' issues "
                   "are taken in and queued items routed (`fleet work list`)")
        return
    routed = (f", routed by capability {started.schedule.capability}"
              if started.schedule.capability else "")
    click.echo(f"{started.agent}: schedule {schedule} ran ({started.unit}): its request is "
               f"queued for {started.agent}'s inbox{routed}")


def checked_id(value: str) -> str:
    """A work item id argument, checked before anything is sent (a usage error otherwise)."""
    from fleet.control.work import WorkValueError
    from fleet.control.work import checked_id as checked

    try:
        return checked(value)
    except WorkValueError as exc:
        raise click.BadParameter(str(exc)) from None


id_argument = click.argument("item_id", metavar="ID",
                             callback=lambda ctx, param, value: checked_id(value))


def issue_of(item: WorkItem) -> str:
    """``acme/shop#7 (gitea)``."""
    return printable(f"{item['repo']}#{item['issue']} ({item['forge']})")


def item_line(item: WorkItem) -> list[str]:
    """An item in a list: id, state, issue, assignee, title; then its PR or its reason."""
    lines = [f"{item['id']}  {item['state']:<8}  {issue_of(item)}  "
             f"{printable(item['assignee'] or '-')}  {printable(item['title'])}"]
    if item["pr_url"]:
        lines.append(f"    pull request {printable(item['pr_url'])}")
    if item["reason"]:
        lines.append(f"    reason: {printable(item['reason'])}")
    return lines


@work.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only items in this state.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT,
              show_default=True, help="At most this many items.")
@click.option("--after", callback=lambda ctx, param, value: value and checked_id(value),
              help="The next page: items older than this id (as the last page said).")
@json_option
@pass_cli
def list_command(cli: CliContext, state: str | None, limit: int, after: str | None,
                 as_json: bool) -> None:
    """The orchestrator's work items, newest first: state, issue, assignee, title, and the
    pull request or the reason."""
    from fleet.control.work import list_items

    page = list_items(cli.registry, state, limit, after or None)
    if as_json:
        click.echo(json.dumps(page))
        return
    if not page["items"]:
        click.echo(f"No {state + ' ' if state else ''}work items.")
        return
    for item in page["items"]:
        for line in item_line(item):
            click.echo(line)
    counts = page["counts"]
    click.echo(f"{sum(counts.values())} work item(s): " + ", ".join(
        f"{counts.get(name, 0)} {name}" for name in STATES))
    if page["next"]:
        click.echo(f"More: fleet work list --after {printable(page['next'])}")


def event_line(event: dict[str, Any]) -> str:
    """A timeline event: time, kind, detail as JSON (escaped)."""
    detail = json.dumps(event["detail"], sort_keys=True)
    return f"  {printable(event['at'])}  {printable(event['kind']):<9} {printable(detail)}"


@work.command("show")
@id_argument
@json_option
@pass_cli
def show_command(cli: CliContext, item_id: str, as_json: bool) -> None:
    """Work item ID and its timeline: intake, routing, each model turn and tool call, test
    results, the pull request."""
    from fleet.control.work import show

    found = show(cli.registry, item_id)
    if as_json:
        click.echo(json.dumps(found))
        return
    item = found["item"]
    capability = f" (capability {printable(item['capability'])})" if item["capability"] else ""
    rows = [f"{item['id']}  {item['state']}  attempt(s) {item['attempts']}",
            f"issue     {issue_of(item)} {printable(item['issue_url'])}",
            f"title     {printable(item['title'])}",
            f"assignee  {printable(item['assignee'] or '-')}{capability}",
            f"branch    {printable(item['branch'])}",
            f"pull      {printable(item['pr_url'] or '-')}",
            f"reason    {printable(item['reason'] or '-')}",
            f"created   {printable(item['created'])}, updated {printable(item['updated'])}",
            "timeline"]
    if item["events_dropped"]:
        rows.append(f"  ({item['events_dropped']} older event(s) dropped)")
    rows += [event_line(dict(event)) for event in found["timeline"]]
    click.echo("\n".join(rows))


@work.command("retry")
@id_argument
@pass_cli
def retry_command(cli: CliContext, item_id: str) -> None:
    """Queue failed work item ID again: the orchestrator routes it to a worker."""
    from fleet.control.work import retry

    item = retry(cli.registry, item_id)
    click.echo(f"{item['id']}: queued again (attempt {item['attempts'] + 1} next); the "
               "orchestrator routes it to a worker.")


@work.command("cancel")
@id_argument
@click.confirmation_option(prompt="Cancel this work item for good?")
@pass_cli
def cancel_command(cli: CliContext, item_id: str) -> None:
    """Close work item ID (queued, working or failed); a proposed one is closed on the
    forge."""
    from fleet.control.work import cancel

    item = cancel(cli.registry, item_id)
    click.echo(f"{item['id']}: closed ({printable(item['reason'] or '')}).")
