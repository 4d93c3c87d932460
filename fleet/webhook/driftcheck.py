"""Scheduled drift checks of the receiver: is the fleet still what the deploy tag says?

Every ``FLEET_DRIFT_INTERVAL`` seconds (default 900; ``0`` turns checks off) the dispatcher,
between deploys and never during one (it holds the deploy lock), fetches the repository,
checks out the commit the deploy tag points to now and runs ``fleet drift`` there: the real
deploy's dry run. Each check is recorded in ``drift_checks`` from the dry run's record (per
host the operations that would change, and the diffs). When drift appears (a host drifted
that was not before) or clears (no host drifted after some did), an ``alert`` goes over the
bus to the orchestrator (:mod:`fleet.webhook.alerts`). With ``FLEET_DRIFT_HEAL=1`` a drifted
fleet gets a deploy queued (off by default).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.sqlite import immediate
from bus.timestamps import parse_timestamp, utc_timestamp
from fleet.control.drift import HostDrift, report_from_record
from fleet.core.errors import DeployError
from fleet.core.masking import Masker
from fleet.webhook.checkout import checkout, fetch, resolve_tag
from fleet.webhook.config import Settings
from fleet.webhook.push import Push
from fleet.webhook.queue import HEAL_FORGE, enqueue
from fleet.webhook.runner import secret_values, work_env

Alert = Callable[[Settings, Path, str, list[str], int], str]


@dataclass(frozen=True)
class CheckResult:
    """One finished check: its id, status, the drifted hosts and the alert it raised."""

    check_id: int
    status: str
    drifted: list[str]
    alert: str


def due(conn: sqlite3.Connection, settings: Settings, at: float, since: float) -> bool:
    """True when checks are on and ``drift_interval`` has passed since the last check started,
    or (before the first) since ``since``, when the dispatcher started."""
    if settings.drift_interval <= 0:
        return False
    row = conn.execute("SELECT MAX(started_at) FROM drift_checks").fetchone()
    last = parse_timestamp(None if row is None else row[0])
    return at - (since if last is None else last.timestamp()) >= settings.drift_interval


def previous_drifted(conn: sqlite3.Connection) -> list[str] | None:
    """The hosts the last finished check found drifted (None before the first check)."""
    row = conn.execute("SELECT drifted FROM drift_checks WHERE status IN ('ok', 'drift') "
                       "ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else list(json.loads(row[0]))


def alert_kind(before: list[str] | None, after: list[str]) -> str:
    """``appeared`` when a host drifted that had not, ``cleared`` when none is left, else ``""``."""
    if set(after) - set(before or []):
        return "appeared"
    if before and not after:
        return "cleared"
    return ""


def run_check(conn: sqlite3.Connection, settings: Settings, alert: Alert) -> CheckResult:
    """Run one drift check (the caller holds the deploy lock) and record it."""
    with immediate(conn):
        check_id = int(conn.execute(
            "INSERT INTO drift_checks (started_at, status) VALUES (?, 'running')",
            (utc_timestamp(),)).lastrowid or 0)
    before = previous_drifted(conn)
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"drift-{check_id}.log"
    commit = None
    try:
        with log_path.open("wb") as output:
            cache = fetch(settings.repo_url, settings.state_dir, output)
            commit = resolve_tag(cache, settings.deploy_tag, settings.repo_url)
            work = checkout(cache, commit, settings.state_dir, output)
            hosts = dry_run(settings, work, check_id, output)
            registry = Path(settings.deploy_env().get("FLEET_REGISTRY")
                            or work / "registry.yaml")
    except Exception as exc:  # recorded as failed, never left running
        summary = Masker(secret_values(settings))(f"drift check failed: {exc!r}")
        finish(conn, check_id, commit_sha=commit, status="failed", summary=summary)
        return CheckResult(check_id, "failed", [], "")
    drifted = [host.agent for host in hosts if host.drifted]
    kind = alert_kind(before, drifted)
    status = "drift" if drifted else "ok"
    summary = (f"{len(drifted)} of {len(hosts)} host(s) drifted: {', '.join(drifted)}"
               if drifted else f"all {len(hosts)} host(s) as deployed")
    sent = alert(settings, registry, kind, drifted, check_id) if kind else ""
    heal = queue_heal(conn, settings, check_id, commit) if drifted and settings.drift_heal \
        else None
    finish(conn, check_id, commit_sha=commit, status=status, summary=summary,
           drifted=json.dumps(drifted), hosts=json.dumps([host_row(host) for host in hosts]),
           alert=kind, alert_status=sent, heal_run_id=heal)
    return CheckResult(check_id, status, drifted, kind)


def dry_run(settings: Settings, work: Path, check_id: int, output: Any) -> list[HostDrift]:
    """``fleet drift`` in ``work``; the hosts of its dry run's record."""
    run_id = f"drift-{check_id}"
    records = settings.state_dir / "records"
    env = work_env(settings, work, records / f"{run_id}.json")
    subprocess.run([sys.executable, "-m", "fleet", "drift"], cwd=work, env=env,
                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                   timeout=settings.deploy_timeout, check=False)
    record = records / f"{run_id}.json"
    if not record.exists():
        raise DeployError(f"the dry run wrote no run record ({record.name}); see {output.name}")
    return report_from_record(json.loads(record.read_text())).hosts


def host_row(host: HostDrift) -> dict[str, Any]:
    """What the check keeps of a host: status, operations, diffed files, reason."""
    return {"agent": host.agent, "status": host.status, "operations": host.operations,
            "files": sorted(host.diffs), "reason": host.reason}


def queue_heal(conn: sqlite3.Connection, settings: Settings, check_id: int, commit: str) -> int:
    """Queue a deploy of the tag (self-heal); its run id."""
    push = Push(forge=HEAL_FORGE, delivery_id=f"drift-check-{check_id}", event="drift",
                ref=f"refs/tags/{settings.deploy_tag}", before="", sha=commit,
                pusher="drift check", repository="")
    return enqueue(conn, push)


def finish(conn: sqlite3.Connection, check_id: int, **columns: Any) -> None:
    """Close check ``check_id`` with ``columns``."""
    columns["ended_at"] = utc_timestamp()
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with immediate(conn):
        conn.execute(f"UPDATE drift_checks SET {assignments} WHERE id = ?",
                     (*columns.values(), check_id))


def recent(conn: sqlite3.Connection, limit: int = 10) -> list[dict[str, Any]]:
    """The newest checks, newest first, as plain data."""
    rows = conn.execute("SELECT * FROM drift_checks ORDER BY id DESC LIMIT ?", (limit,))
    return [{**dict(row), "drifted": json.loads(row["drifted"]),
             "hosts": json.loads(row["hosts"])} for row in rows]

