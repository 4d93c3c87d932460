"""The background side of the receiver: one thread per process drains the deploy queue.

A request enqueues a run and wakes its process's thread; the thread waits for the deploy lock
(another worker may be deploying), marks runs left ``running`` by a dead process
``interrupted``, then claims and runs queued work until none is left. Every thread also looks
at the queue on start-up and every ``POLL_SECONDS``, so work queued before a crash still runs.
"""

from __future__ import annotations

import logging
import os
import threading

from flask import Flask, current_app

from fleet.sqlite import immediate
from fleet.webhook.config import Settings
from fleet.webhook.db import connect, now
from fleet.webhook.lock import DeployLock
from fleet.webhook.queue import claim_next, mark_interrupted, queue_depth
from fleet.webhook.runner import execute

POLL_SECONDS = 15.0
log = logging.getLogger(__name__)


def drain(settings: Settings, startup: bool = False) -> list[int]:
    """Run every queued deploy (newest sha first, older ones coalesced); return the run ids."""
    conn = connect(settings.db_path)
    ran: list[int] = []
    try:
        if not startup and queue_depth(conn) == 0:
            return ran
        with DeployLock(settings.state_dir) as lock:
            assert lock.fd is not None
            mark_interrupted(conn)
            while (claim := claim_next(conn)) is not None:
                ran.append(claim.run_id)
                try:
                    execute(conn, settings, claim, lock.fd)
                except Exception as exc:  # record it, keep the queue moving
                    log.exception("run %s failed inside the receiver", claim.run_id)
                    with immediate(conn):
                        conn.execute("UPDATE runs SET status = 'failed', ended_at = ?, summary = ?"
                                     " WHERE id = ?", (now(), f"the receiver failed while "
                                     f"running this deploy: {exc!r}", claim.run_id))
    finally:
        conn.close()
    return ran


class Dispatcher:
    """The per-process drain thread, (re)started lazily after a fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wake = threading.Event()
        self.pid: int | None = None

    def kick(self) -> None:
        """Make sure this process has a running thread and wake it up."""
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.wake = threading.Event()
            threading.Thread(target=self._loop, name="fleet-deploy-dispatcher",
                             daemon=True).start()
        self.wake.set()

    def _loop(self) -> None:
        """Drain on every wake-up and every POLL_SECONDS, forever."""
        startup = True
        while True:
            self.wake.wait(timeout=POLL_SECONDS)
            self.wake.clear()
            try:
                drain(self.settings, startup=startup)
                startup = False
            except Exception:
                log.exception("the deploy dispatcher failed; retrying in %ss", POLL_SECONDS)


def init_app(app: Flask) -> None:
    """Start the drain thread unless the app is configured with ``DISPATCH=False``."""
    dispatcher = Dispatcher(app.config["SETTINGS"])
    app.extensions["fleet.webhook.dispatcher"] = dispatcher
    if app.config.get("DISPATCH", True):
        dispatcher.kick()


def kick() -> None:
    """Wake the current app's drain thread (after a run was queued)."""
    if current_app.config.get("DISPATCH", True):
        current_app.extensions["fleet.webhook.dispatcher"].kick()
