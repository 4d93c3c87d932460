"""Run one claimed deploy: resolve the tag, deploy its commit unless the fleet runs it already.

The dispatcher calls :func:`execute` holding the deploy lock. It fetches the repository,
resolves the run's tag to the commit it points to *now* (a replayed or late push cannot move
the fleet back), checks that commit out into a fresh work dir, and asks the fleet whether every
agent runs its release already (``up-to-date``: nothing is started). Otherwise it runs
``python -m fleet deploy`` there (the rollout of ``fleet deploy``: canary, workers, automatic
rollback) with ``FLEET_RUN_ID`` and ``FLEET_RECORDS_DIR`` set, and takes the outcome from the
typed run record that rollout writes, never from its console output. The command's output
goes to ``<state dir>/logs/run-<id>.log``, masked line by line as it is written (see
:mod:`fleet.webhook.logcopy`); it inherits the deploy lock (see :mod:`fleet.webhook.lock`).

When the checkout's ``registry.yaml`` names a sealed secrets file (``fleet.secrets``), the
deploy opens that file of the checked-out commit (``FLEET_SECRETS`` names it; the receiver's
age identity is ``FLEET_AGE_IDENTITY``): the tag's commit brings its own secrets, so moving the
tag back deploys the older ones too. The run log masks every value decrypted from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bus.sqlite import immediate
from bus.timestamps import id_stamp, utc_timestamp
from fleet.control.release import broken_requested, release_id
from fleet.control.secrets import SECRETS_ENV, load_secrets
from fleet.core.errors import DeployError, FleetError
from fleet.core.masking import Masker
from fleet.core.registry import load_registry
from fleet.webhook.checkout import checkout, fetch, is_ancestor, redact, resolve_tag, rev_parse
from fleet.webhook.config import RECEIVER_SECRETS, Settings
from fleet.webhook.current import deployed_everywhere, fleet_releases
from fleet.webhook.health import check_health
from fleet.webhook.logcopy import MaskedLog, unmasked_path
from fleet.webhook.queue import Claim

RECORD_STATUSES = ("ok", "degraded", "failed")
HOST_FIELDS = ("status", "reason", "problems", "release", "expected_release", "changed",
               "restarted", "drift")


@dataclass
class Outcome:
    """How a run ended, in the columns of its row."""

    status: str
    summary: str
    exit_status: int | None = None
    hosts: dict[str, Any] = field(default_factory=dict)
    stages: list[Any] = field(default_factory=list)
    health: list[Any] = field(default_factory=list)

    def columns(self) -> dict[str, Any]:
        """The row's columns for this outcome."""
        return {"status": self.status, "summary": self.summary, "exit_status": self.exit_status,
                "hosts": json.dumps(self.hosts), "stages": json.dumps(self.stages),
                "health": json.dumps(self.health)}


def fleet_run_id(run_id: int) -> str:
    """The id of the fleet run record a webhook run's deploy writes."""
    return f"webhook-{run_id}-{id_stamp()}"


def execute(conn: sqlite3.Connection, settings: Settings, claim: Claim, lock_fd: int) -> str:
    """Run ``claim`` and record the outcome; returns the final status."""
    log_path = settings.state_dir / "logs" / f"run-{claim.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record = settings.state_dir / "records" / f"{fleet_run_id(claim.run_id)}.json"
    update(conn, claim.run_id, log_path=str(log_path))
    raw_path = unmasked_path(log_path)
    with MaskedLog(raw_path, log_path, Masker(secret_values(settings))) as masked, \
            raw_path.open("ab") as log:
        log.write(f"==> run {claim.run_id}: tag {claim.tag} (the push claimed {claim.sha}) "
                  f"from {redact(settings.repo_url)} ({utc_timestamp()})\n".encode())
        try:
            outcome = deploy(conn, settings, claim, record, log, lock_fd, masked)
        except DeployError as exc:
            outcome = Outcome("failed", str(exc))
        log.write(f"==> {outcome.status}: {outcome.summary}\n".encode())
    update(conn, claim.run_id, ended_at=utc_timestamp(), **outcome.columns())
    return outcome.status


def deploy(conn: sqlite3.Connection, settings: Settings, claim: Claim, record: Path,
           log: IO[bytes], lock_fd: int, masked: MaskedLog | None = None) -> Outcome:
    """Resolve, check out, and deploy unless the fleet runs the release already (a self-heal
    run deploys anyway: its drift is in files the release does not name). ``masked`` (the run
    log's copier) masks the secrets of the checkout from then on."""
    cache = fetch(settings.repo_url, settings.state_dir, log)
    commit = resolve_tag(cache, claim.tag, settings.repo_url)
    log.write(f"==> tag {claim.tag} points to {commit}\n".encode())
    work = checkout(cache, commit, settings.state_dir, log)
    env = deploy_env(settings, claim, work, commit, record)
    if masked is not None and SECRETS_ENV in env:
        log.flush()
        masked.mask_with(Masker(secret_values(settings, env)))
    release = release_id(work, broken=broken_requested(env))
    update(conn, claim.run_id, commit_sha=commit, release=release)
    registry = Path(env.get("FLEET_REGISTRY") or work / "registry.yaml")
    running = fleet_releases(registry, settings.health_check, settings.health_timeout)
    if deployed_everywhere(running, release) and not claim.heal:
        return Outcome("up-to-date", f"every agent runs release {release} already (tag "
                       f"{claim.tag} at {commit[:12]}); nothing deployed", health=running)
    newer = rolled_back_from(cache, commit, [
        str(item["release"]) for item in running if item.get("release")]
        or last_deployed(conn, claim.run_id))
    if newer is not None:
        update(conn, claim.run_id, rollback_from=newer)
        log.write(f"==> rollback: tag {claim.tag} was moved back from release {newer} to "
                  f"{commit[:12]}, an older commit\n".encode())
    log.write(f"==> {' '.join(settings.command)} (in {work}, release {release}, fleet run "
              f"{record.stem})\n".encode())
    log.flush()
    update(conn, claim.run_id, fleet_run_id=record.stem, record_path=str(record))
    started = time.time()
    exit_status = run_command(settings, work, env, log, lock_fd)
    found = locate_record(record, started)
    if found != record or not found.exists():  # the one it wrote; or none, then no path
        update(conn, claim.run_id, fleet_run_id=found.stem,
               record_path=str(found) if found.exists() else None)
    outcome = record_outcome(found, exit_status)
    if newer is not None:
        outcome.summary = f"rollback from release {newer}: {outcome.summary}"
    if outcome.status == "ok":
        healthy, outcome.health = check_health(registry, settings.health_check,
                                               settings.health_timeout)
        if not healthy:
            outcome.status = "unhealthy"
            outcome.summary = "deployed, but the fleet is unhealthy: " + ", ".join(
                f"{item.get('agent')} ({'; '.join(_reasons(item))})"
                for item in outcome.health if not item.get("healthy"))
    return outcome


def rolled_back_from(cache: Path, commit: str, releases: list[str]) -> str | None:
    """The release among ``releases`` (what the fleet runs) whose commit ``commit`` is an
    older ancestor of, i.e. the tag was moved back: a rollback; None otherwise (a release that
    is no commit of the repository, e.g. one built from a dirty tree, never counts)."""
    for release in sorted(set(releases)):
        newer = rev_parse(cache, release)
        if newer is not None and newer != commit and is_ancestor(cache, commit, newer):
            return release
    return None


def last_deployed(conn: sqlite3.Connection, run_id: int) -> list[str]:
    """The release of the newest run before ``run_id`` that deployed (the receiver's own
    memory, for when the fleet is not asked: ``FLEET_HEALTH_CHECK=off``)."""
    row = conn.execute("SELECT release FROM runs WHERE id < ? AND release IS NOT NULL AND "
                       "status IN ('ok', 'degraded', 'unhealthy') ORDER BY id DESC LIMIT 1",
                       (run_id,)).fetchone()
    return [row["release"]] if row is not None else []


def locate_record(record: Path, started: float) -> Path:
    """``record``, or else the one record the deploy wrote into its records dir since
    ``started``: the rollout of an older commit may not take ``FLEET_RUN_ID`` (deploys never
    overlap, and the dir is the receiver's own)."""
    if record.exists():
        return record
    written = [path for path in record.parent.glob("*.json")
               if path.stat().st_mtime >= started - 1]
    return max(written, key=lambda path: path.stat().st_mtime) if written else record


def record_outcome(record: Path, exit_status: int | None) -> Outcome:
    """The outcome the deploy's run record states (``failed`` when it wrote none)."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return Outcome("failed", f"the deploy exited with status {exit_status} and wrote no "
                       f"run record ({record.name}); see the log", exit_status)
    status = data.get("status")
    hosts = {name: {key: entry[key] for key in HOST_FIELDS if key in entry}
             for name, entry in (data.get("hosts") or {}).items()}
    if status == "partial":  # a region was unreachable: the others deployed
        status = "degraded"
    if status not in RECORD_STATUSES:
        status = "failed"
    elif status == "ok" and exit_status != 0:
        status = "failed"  # a record that says ok from a deploy that failed is not believed
    return Outcome(status, summarize(data, status, hosts), exit_status, hosts,
                   list(data.get("stages") or []))


def summarize(data: dict[str, Any], status: str, hosts: dict[str, Any]) -> str:
    """One line: the release; for a run that is not ``ok``, each failed host with its reason
    (canary first) and the hosts never deployed."""
    release = data.get("release") or "?"
    if status == "ok":
        return f"deployed release {release} to {len(hosts)} host(s)"
    staged = [name for stage in data.get("stages") or [] for name in stage.get("hosts", [])]
    order = list(dict.fromkeys([*staged, *hosts]))
    bad = [f"{name} {hosts[name].get('status', 'failed')} ({_host_reason(hosts[name])})"
           for name in order if name in hosts
           and hosts[name].get("status") not in ("ok", "skipped")]
    skipped = list(dict.fromkeys([*(data.get("skipped") or []), *(
        name for name in order if hosts.get(name, {}).get("status") == "skipped")]))
    text = f"release {release} {status}: " + ("; ".join(bad) or f"the deploy said {status}")
    return text + (f"; not deployed: {', '.join(skipped)}" if skipped else "")


def deploy_env(settings: Settings, claim: Claim, work: Path, commit: str,
               record: Path) -> dict[str, str]:
    """:func:`work_env` plus what the deploy may want to know of the run."""
    return {**work_env(settings, work, record), "FLEET_DEPLOY_RUN": str(claim.run_id),
            "FLEET_DEPLOY_TAG": claim.tag, "FLEET_DEPLOY_SHA": commit}


def work_env(settings: Settings, work: Path, record: Path) -> dict[str, str]:
    """The receiver's environment without its secrets, plus the run record to write; the work
    dir first on ``PYTHONPATH`` (the checked-out code runs); ``FLEET_SECRETS`` the checkout's
    sealed file when its registry names one (:func:`checkout_secrets`)."""
    env = {key: value for key, value in os.environ.items() if key not in RECEIVER_SECRETS}
    env.update(settings.deploy_env())
    sealed = checkout_secrets(work)
    if sealed is not None:
        env[SECRETS_ENV] = str(sealed)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        FLEET_RUN_ID=record.stem, FLEET_RECORDS_DIR=str(record.parent), PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")])),
        PATH=os.pathsep.join(filter(None, [bin_dir, env.get("PATH", os.defpath)])),
    )
    return env


def run_command(settings: Settings, work: Path, env: dict[str, str], log: IO[bytes],
                lock_fd: int) -> int:
    """Run the deploy command to completion (killed after ``deploy_timeout``)."""
    command = settings.command
    try:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock_fd,))
    except OSError as exc:
        raise DeployError(f"cannot start the deploy command {command[0]!r}: "
                          f"{exc.strerror}; check FLEET_DEPLOY_COMMAND") from None
    try:
        return process.wait(timeout=settings.deploy_timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        raise DeployError(f"the deploy ran longer than FLEET_DEPLOY_TIMEOUT "
                          f"({settings.deploy_timeout:g}s) and was stopped") from None


def checkout_secrets(work: Path) -> Path | None:
    """The sealed secrets file the checkout's ``registry.yaml`` names (``fleet.secrets.file``,
    in the checkout), or None: none named, or a registry the deploy will refuse itself. The
    same file whichever registry the deploy reads (``FLEET_REGISTRY`` may name another)."""
    try:
        return load_registry(work / "registry.yaml").sealed_path()
    except FleetError:
        return None


def secret_values(settings: Settings, env: dict[str, str] | None = None) -> list[str]:
    """What the run log masks: the receiver's own secrets and the values of the deploy's
    ``$FLEET_SECRETS`` (of ``env``, the deploy's environment, when given: a sealed file of the
    checkout, opened in memory with ``$FLEET_AGE_IDENTITY``). Without ``env`` (a log left by a
    killed run, a failed drift check), the sealed file of the last checkout if it has one."""
    from fleet.control.sealed import IDENTITY_ENV  # pyrage: imported when a run needs it

    values = [value for value in (settings.env.get(name) for name in RECEIVER_SECRETS) if value]
    source = env if env is not None else settings.env
    path = source.get(SECRETS_ENV) or os.environ.get(SECRETS_ENV) or None
    if env is None:
        path = str(checkout_secrets(settings.state_dir / "work") or "") or path
    with contextlib.suppress(FleetError):  # the deploy reports a broken secrets file itself
        values += load_secrets(
            path, identity=source.get(IDENTITY_ENV) or os.environ.get(IDENTITY_ENV) or None
        ).values()
    return values


def update(conn: sqlite3.Connection, run_id: int, **columns: Any) -> None:
    """Set columns of run ``run_id``."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with immediate(conn):
        conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*columns.values(), run_id))


def _host_reason(entry: dict[str, Any]) -> str:
    """Why a host is not ``ok``, in one line."""
    return entry.get("reason") or "; ".join(map(str, entry.get("problems") or [])) \
        or "; ".join(map(str, entry.get("drift") or [])) or "no reason recorded"


def _reasons(item: dict[str, Any]) -> list[str]:
    """Why one health record is not healthy."""
    found = [f"{key} {item[key]}" for key in ("ssh", "health") if item.get(key, "ok") != "ok"]
    return found + [str(problem) for problem in item.get("problems", [])] or ["unhealthy"]
