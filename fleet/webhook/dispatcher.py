"""The dispatcher: one process per state dir that owns the deploy queue and the deploy it runs.

Web workers only enqueue runs and read them; after enqueueing they wake the dispatcher through
a FIFO (:mod:`fleet.webhook.wake`), and start one if none listens (``fleet webhook dispatch
--parent-pid``). ``fleet webhook serve`` starts it beside gunicorn. A killed or timed-out web
worker therefore never touches a deploy.

The dispatcher holds ``dispatcher.lock`` for its whole life (a second one exits at once). On
start it takes the deploy lock (waiting for a deploy orphaned by a killed dispatcher to end),
marks runs left ``running`` as ``interrupted``, masks the logs their dispatcher left unmasked
into their run logs and removes the unmasked files; then it claims and runs queued work until
none is left, and waits for a wake-up (or ``POLL_SECONDS``) to look again. With
``parent_pid`` it ends, between runs, once that process (the gunicorn master) is gone.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from flask import Flask, current_app

from bus.timestamps import utc_timestamp
from fleet.core.liveness import Process
from fleet.core.masking import Masker
from fleet.webhook import driftcheck
from fleet.webhook.alerts import drift_alert
from fleet.webhook.config import Settings
from fleet.webhook.db import connect
from fleet.webhook.lock import DeployLock, DispatcherLock
from fleet.webhook.logcopy import salvage
from fleet.webhook.queue import claim_next, mark_interrupted, queue_depth
from fleet.webhook.runner import Outcome, execute, record_outcome, secret_values, update
from fleet.webhook.wake import Listener, notify

POLL_SECONDS = 5.0
log = logging.getLogger(__name__)


def drain(settings: Settings, startup: bool = False) -> list[int]:
    """Run every queued deploy (each covering the other queued runs of its tag); return the
    run ids. ``startup`` first recovers what a dead dispatcher left behind."""
    conn = connect(settings.db_path)
    ran: list[int] = []
    try:
        if not startup and queue_depth(conn) == 0:
            return ran
        with DeployLock(settings.state_dir) as lock:
            assert lock.fd is not None
            if startup:
                recover(conn, settings)
            while (claim := claim_next(conn)) is not None:
                ran.append(claim.run_id)
                try:
                    execute(conn, settings, claim, lock.fd)
                except Exception as exc:  # record it, keep the queue moving
                    log.exception("run %s failed inside the dispatcher", claim.run_id)
                    update(conn, claim.run_id, ended_at=utc_timestamp(), **Outcome(
                        "failed", f"the dispatcher failed while running this deploy: {exc!r}"
                    ).columns())
    finally:
        conn.close()
    return ran


def check_drift_if_due(settings: Settings, since: float) -> None:
    """Run the scheduled drift check when it is due (``since``: when the dispatcher started),
    between deploys (queued deploys first)."""
    conn = connect(settings.db_path)
    try:
        if not driftcheck.due(conn, settings, time.time(), since):
            return
        with DeployLock(settings.state_dir):
            if queue_depth(conn) == 0:
                driftcheck.run_check(conn, settings, drift_alert)
    finally:
        conn.close()


def recover(conn: sqlite3.Connection, settings: Settings) -> list[int]:
    """Under the deploy lock: mark runs left ``running`` ``interrupted`` (with what their fleet
    run record says, if their deploy wrote one) and mask every unmasked log left behind."""
    interrupted = mark_interrupted(conn)
    for run_id in interrupted:
        row = conn.execute("SELECT record_path, summary FROM runs WHERE id = ?",
                           (run_id,)).fetchone()
        if row["record_path"] and Path(row["record_path"]).exists():
            found = record_outcome(Path(row["record_path"]), None)
            update(conn, run_id, hosts=json.dumps(found.hosts), stages=json.dumps(found.stages),
                   summary=f"{row['summary']}; its fleet run record says: {found.summary}")
    masker = Masker(secret_values(settings))
    for raw in sorted((settings.state_dir / "logs").glob("*.log.unmasked")):
        salvage(raw, masker)
    return interrupted


def run(settings: Settings, parent_pid: int | None = None,
        poll_seconds: float = POLL_SECONDS, parent_started: int | None = None) -> bool:
    """Be the dispatcher until process ``parent_pid`` is gone (forever without it); False when
    another dispatcher of the state dir runs already. The parent is the process that had that
    pid when the dispatcher started (``parent_started``: its start time, read then if not
    given), so a later process reusing the pid does not keep the dispatcher alive."""
    parent = None if parent_pid is None else (
        Process(parent_pid, parent_started) if parent_started is not None
        else Process.of(parent_pid))
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    holder = DispatcherLock(settings.state_dir)
    if not holder.acquire(blocking=False):
        return False
    try:
        with Listener(settings.state_dir) as wake:
            startup, started = True, time.time()
            while True:
                try:
                    drain(settings, startup=startup)
                    startup = False
                    check_drift_if_due(settings, started)
                except Exception:
                    log.exception("the deploy dispatcher failed; retrying in %ss", poll_seconds)
                if parent is not None and not parent.alive():
                    return True
                wake.wait(poll_seconds)
    finally:
        holder.release()


def spawn(parent_pid: int) -> subprocess.Popen[bytes]:
    """Start a dispatcher process for this environment's settings (reaped by a thread)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet", "webhook", "dispatch", "--parent-pid", str(parent_pid)],
        stdin=subprocess.DEVNULL)
    threading.Thread(target=process.wait, name="fleet-dispatcher-reaper", daemon=True).start()
    return process


def running(state_dir: Path) -> bool:
    """True when a dispatcher of ``state_dir`` holds its lock."""
    return DispatcherLock(state_dir).held()


class Waker:
    """A web worker's handle on the dispatcher: wake it, or start one when none listens (a
    child of this worker that watches the gunicorn master), at most one starting at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def wake(self) -> None:
        """Wake the dispatcher (after a run was queued), starting one if needed."""
        if notify(self.settings.state_dir):
            return
        with self.lock:
            if self.started is not None and self.started.poll() is None:
                return  # still starting (or it lost the race and is about to exit)
            if running(self.settings.state_dir):
                return  # starting, not listening yet: it drains the queue when it is
            self.started = spawn(os.getppid())


def init_app(app: Flask) -> None:
    """Make sure a dispatcher runs, unless the app is configured with ``DISPATCH=False``."""
    waker = app.extensions["fleet.webhook.dispatcher"] = Waker(app.config["SETTINGS"])
    if app.config.get("DISPATCH", True):
        waker.wake()


def kick() -> None:
    """Wake the dispatcher (after a run was queued)."""
    if current_app.config.get("DISPATCH", True):
        current_app.extensions["fleet.webhook.dispatcher"].wake()
