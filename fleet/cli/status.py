"""``fleet status``: every agent's SSH, health, and release, soul and config hashes against
what the registry and the repository require now, in parallel.

Exit codes: 0 every agent ``ok``; 1 some agent ``down``; 3 none down but some in ``drift``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import click

from fleet.cli.context import CliContext, pass_cli
from fleet.control.expected import Judgement, expected, judge, short, wanted_release
from fleet.control.status import DEFAULT_TIMEOUT, AgentStatus, probe_fleet

EXIT_DOWN = 1
EXIT_DRIFT = 3


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds each SSH or HTTP probe may take.")
@click.option("--think", is_flag=True,
              help="Also ask each agent with a runtime for a live model round trip (a short "
                   "prompt answered with tokens in time); one that fails is down.")
@pass_cli
def status(cli: CliContext, as_json: bool, timeout: float, think: bool) -> None:
    """Each agent `ok`, `drift` or `down`: SSH, health, and its release, soul and config
    against the registry and repository. Exit 0 all ok, 1 some down, 3 some in drift."""
    registry = cli.registry
    with ThreadPoolExecutor(max_workers=1) as pool:  # the release is worked out meanwhile
        wanted = pool.submit(wanted_release)
        results = probe_fleet(registry, timeout=max(timeout, 15.0) if think else timeout,
                              think=think)
        release, source = wanted.result()
    verdicts = [judge(result, expected(registry, registry.get(result.agent)), release)
                for result in results]
    states = [verdict.state for verdict in verdicts]
    regional = bool(registry.regions)  # grouped by region when the fleet lists its regions
    if as_json:
        click.echo(json.dumps({
            "fleet": registry.name, "healthy": "down" not in states,
            "expected_release": release, "expected_from": source,
            **({"regions": dict(by_region(results, verdicts))} if regional else {}),
            "agents": [{**result.to_dict(), "state": verdict.state, "release_state":
                        verdict.release, "soul_state": verdict.soul,
                        "config_state": verdict.config, "drift": list(verdict.drift)}
                       for result, verdict in zip(results, verdicts, strict=True)]}, indent=2))
    else:
        click.echo(format_table(results, verdicts, regional, think))
        for line in region_summary(results, verdicts) if regional else []:
            click.echo(line)
        click.echo(f"expected release: {release or 'unknown'} ({source})")
    if "down" in states:
        sys.exit(EXIT_DOWN)
    if "drift" in states:
        sys.exit(EXIT_DRIFT)


def by_region(results: list[AgentStatus],
              verdicts: list[Judgement]) -> list[tuple[str, dict[str, str]]]:
    """Each region (in the order the results come, grouped by region) with its agents'
    states; agents without a region under ``-``."""
    regions: dict[str, dict[str, str]] = {}
    for result, verdict in zip(results, verdicts, strict=True):
        regions.setdefault(result.region or "-", {})[result.agent] = verdict.state
    return list(regions.items())


def region_summary(results: list[AgentStatus], verdicts: list[Judgement]) -> list[str]:
    """One line per region: how many of its agents are ok, drift, down."""
    lines = []
    for name, states in by_region(results, verdicts):
        counts = ", ".join(f"{sum(s == state for s in states.values())} {state}"
                           for state in ("ok", "drift", "down")
                           if state in states.values())
        lines.append(f"region {name}: {len(states)} agent(s): {counts}")
    return lines


def format_table(results: list[AgentStatus], verdicts: list[Judgement],
                 regional: bool = False, think: bool = False) -> str:
    """A table for people: one row per agent, reasons in full after it; ``regional`` adds a
    REGION column (the rows come grouped by region, see
    :func:`fleet.control.status.probe_fleet`); ``think`` the MODEL each agent's /health names
    and its model ROUND TRIP (``-``: none succeeded)."""
    rows = [("AGENT", "ROLE", *(("REGION",) if regional else ()), "HOST", "SSH", "HEALTH",
             "RELEASE", "SOUL", *(("MODEL", "ROUND TRIP") if think else ()), "STATE")]
    for result, verdict in zip(results, verdicts, strict=True):
        trip = "-" if result.round_trip_ms is None else f"{result.round_trip_ms:.0f} ms"
        rows.append((
            result.agent, result.role, *((result.region or "-",) if regional else ()),
            result.host, "ok" if result.ssh == "ok" else "FAIL",
            "ok" if result.health == "ok" else "FAIL",
            result.release or "-", short(result.soul_sha256),
            *((result.model or "-", trip) if think else ()), verdict.state,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    for result, verdict in zip(results, verdicts, strict=True):
        if result.ssh != "ok":
            lines.append(f"{result.agent}: ssh: {result.ssh}")
        if result.health != "ok":
            lines.append(f"{result.agent}: health: {result.health}")
        lines += [f"{result.agent}: drift: {line}" for line in verdict.drift]
    return "\n".join(lines)
