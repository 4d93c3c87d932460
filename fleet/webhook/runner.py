"""Run one claimed deploy: fetch the sha, run the deploy command, check health, record it all.

The command (``FLEET_DEPLOY_COMMAND``, default ``pyinfra -y --json inventory.py deploy.py``)
runs in the fresh work dir in its own session, its stdout and stderr streamed to
``<state dir>/logs/run-<id>.log`` with secrets masked line by line as they are written (see
:mod:`fleet.webhook.logcopy`); it inherits the deploy lock (see :mod:`fleet.webhook.lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from fleet.errors import DeployError, FleetError
from fleet.masking import Masker
from fleet.secrets import SECRETS_ENV, load_secrets
from fleet.sqlite import immediate
from fleet.webhook.checkout import checkout, redact
from fleet.webhook.config import RECEIVER_SECRETS, Settings
from fleet.webhook.db import now
from fleet.webhook.health import check_health
from fleet.webhook.logcopy import MaskedLog, unmasked_path
from fleet.webhook.queue import Claim
from fleet.webhook.records import read_log_tail
from fleet.webhook.results import host_results

RESULT_BYTES = 8 * 1024 * 1024


def execute(conn: sqlite3.Connection, settings: Settings, claim: Claim, lock_fd: int) -> str:
    """Deploy ``claim`` and record the outcome; returns the final status."""
    log_path = settings.state_dir / "logs" / f"run-{claim.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _update(conn, claim.run_id, log_path=str(log_path))
    hosts: dict[str, Any] = {}
    health: list[Any] = []
    exit_status: int | None = None
    raw_path = unmasked_path(log_path)
    with MaskedLog(raw_path, log_path, Masker(secret_values(settings))) as masked, \
            raw_path.open("ab") as log:
        log.write(f"==> run {claim.run_id}: tag {claim.tag} at {claim.sha} from "
                  f"{redact(settings.repo_url)} ({now()})\n".encode())
        try:
            work, commit = checkout(settings.repo_url, claim.sha, settings.state_dir, log)
            _update(conn, claim.run_id, commit_sha=commit)
            env = deploy_env(settings, claim, work, commit)
            log.write(f"==> {' '.join(settings.deploy_command)} (in {work})\n".encode())
            log.flush()
            exit_status = run_command(settings, work, env, log, lock_fd)
        except DeployError as exc:
            status, summary = "failed", str(exc)
            log.write(f"==> {summary}\n".encode())
        else:
            log.flush()
            masked.copy(final=True)
            hosts = host_results(read_log_tail(str(log_path), RESULT_BYTES))
            status, summary = _outcome(exit_status, hosts, settings)
            if status == "success":
                healthy, health = check_health(_registry_path(env, work),
                                               settings.health_check, settings.health_timeout)
                if not healthy:
                    status = "unhealthy"
                    summary = "deploy finished but the fleet is unhealthy: " + ", ".join(
                        f"{item.get('agent')} ({'; '.join(_reasons(item))})"
                        for item in health if not item.get("healthy"))
            log.write(f"==> {status}: {summary}\n".encode())
    _update(conn, claim.run_id, status=status, ended_at=now(), exit_status=exit_status,
            summary=summary, hosts=json.dumps(hosts), health=json.dumps(health))
    return status


def deploy_env(settings: Settings, claim: Claim, work: Path, commit: str) -> dict[str, str]:
    """The receiver's environment without its secrets, plus what the deploy may want to know."""
    env = {key: value for key, value in os.environ.items() if key not in RECEIVER_SECRETS}
    env.update(settings.deploy_env())
    env.setdefault("FLEET_RECORDS_DIR", str(settings.state_dir / "records"))  # work dir is wiped
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        FLEET_DEPLOY_RUN=str(claim.run_id), FLEET_DEPLOY_TAG=claim.tag, FLEET_DEPLOY_SHA=commit,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")])),
        PATH=os.pathsep.join(filter(None, [bin_dir, env.get("PATH", os.defpath)])),
    )
    return env


def run_command(settings: Settings, work: Path, env: dict[str, str], log: Any,
                lock_fd: int) -> int:
    """Run the deploy command to completion (killed after ``deploy_timeout``)."""
    try:
        process = subprocess.Popen(
            settings.deploy_command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock_fd,))
    except OSError as exc:
        raise DeployError(f"cannot start the deploy command {settings.deploy_command[0]!r}: "
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
        raise DeployError(f"the deploy command ran longer than FLEET_DEPLOY_TIMEOUT "
                          f"({settings.deploy_timeout:g}s) and was stopped") from None


def secret_values(settings: Settings) -> list[str]:
    """What the run log masks: the receiver's own secrets and the deploy's ``$FLEET_SECRETS``."""
    values = [value for value in (settings.env.get(name) for name in RECEIVER_SECRETS) if value]
    with contextlib.suppress(FleetError):  # the deploy reports a broken secrets file itself
        values += load_secrets(settings.env.get(SECRETS_ENV)
                               or os.environ.get(SECRETS_ENV) or None).values()
    return values


def _outcome(exit_status: int | None, hosts: dict[str, Any],
             settings: Settings) -> tuple[str, str]:
    """Status and one-line summary from the exit status and the host results."""
    failed = sorted(host for host, entry in hosts.items() if entry["status"] != "ok")
    changes = sum(entry["changed"] for entry in hosts.values())
    if exit_status == 0 and not failed:
        return "success", f"deployed to {len(hosts)} host(s), {changes} change(s)"
    where = f"; hosts with errors: {', '.join(failed)}" if failed else ""
    return "failed", f"{settings.deploy_command[0]} exited with status {exit_status}{where}"


def _registry_path(env: dict[str, str], work: Path) -> Path:
    """The registry the deploy used: ``$FLEET_REGISTRY`` or the work dir's."""
    return Path(env.get("FLEET_REGISTRY") or work / "registry.yaml")


def _reasons(item: dict[str, Any]) -> list[str]:
    """Why one health record is not healthy."""
    found = [f"{key} {item[key]}" for key in ("ssh", "health") if item.get(key, "ok") != "ok"]
    return found + [str(problem) for problem in item.get("problems", [])] or ["unhealthy"]


def _update(conn: sqlite3.Connection, run_id: int, **columns: Any) -> None:
    """Set columns of run ``run_id``."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with immediate(conn):
        conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*columns.values(), run_id))
