"""The delivery worker: background threads in the gateway process that empty the outbox.

Each thread claims due rows with a lease, POSTs them signed to the recipient's gateway
(``Agent.gateway_url`` + ``/message``) and then deletes, reschedules (exponential backoff
with jitter) or dead-letters them. ``wake()`` starts delivery at once after a send; idle
threads also poll, so retries and rows queued by other processes go out too.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from bus import outbox
from bus.db import connect
from bus.signing import sign
from fleet.registry import Registry

log = logging.getLogger(__name__)
PERMANENT = (400, 413, 415)  # the recipient will never accept this message


@dataclass(frozen=True)
class Settings:
    """Delivery tuning (``BUS_*`` app settings, ``FLEET_BUS_*`` environment)."""

    max_attempts: int = 12
    retry_base: float = 0.5
    retry_max: float = 60.0
    lease_seconds: float = 30.0
    threads: int = 4
    batch: int = 8
    poll_seconds: float = 1.0
    http_timeout: float = 5.0

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from ``retry_base``, jittered."""
        ceiling = min(self.retry_max, self.retry_base * 2 ** min(attempts - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)


class DeliveryWorker:
    """Delivers one agent's outbox; one instance per gateway process."""

    def __init__(self, store: Path, agent: str, key: str, registry: Registry,
                 settings: Settings) -> None:
        self.store, self.agent, self.key = store, agent, key
        self.registry, self.settings = registry, settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the threads in this process (again after a fork); free dead leases first."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid, self._threads = os.getpid(), []
            self._stop.clear()
            db = connect(self.store)
            try:
                outbox.release_dead_leases(db)
            finally:
                db.close()
            token = uuid.uuid4().hex[:8]
            for number in range(self.settings.threads):
                owner = f"{os.getpid()}:{token}:{number}"
                thread = threading.Thread(target=self._run, args=(owner,), daemon=True,
                                          name=f"bus-delivery-{number}")
                thread.start()
                self._threads.append(thread)

    def wake(self) -> None:
        """A message was queued: deliver now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (rows they hold are leased until they expire)."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._pid = 0

    def _run(self, owner: str) -> None:
        db = connect(self.store)
        session = requests.Session()
        try:
            while not self._stop.is_set():
                try:
                    self._cycle(db, session, owner)
                except Exception:  # keep delivering whatever one cycle hit
                    log.exception("bus delivery cycle failed")
                    self._stop.wait(self.settings.poll_seconds)
        finally:
            session.close()
            db.close()

    def _cycle(self, db: sqlite3.Connection, session: requests.Session, owner: str) -> None:
        self._wake.clear()
        rows = outbox.claim(db, owner, self.settings.lease_seconds, self.settings.batch)
        if not rows:
            due = outbox.next_due(db)
            wait = self.settings.poll_seconds
            if due is not None:
                wait = min(wait, max(0.001, due - time.time()))
            self._wake.wait(wait)
            return
        for row in rows:
            self._deliver(db, session, owner, row)

    def _deliver(self, db: sqlite3.Connection, session: requests.Session, owner: str,
                 row: sqlite3.Row) -> None:
        seq, recipient, attempts = row["seq"], row["recipient"], row["attempts"]
        if row["expires_at"] is not None and time.time() > row["expires_at"]:
            outbox.dead_letter(db, seq, owner, "ttl expired")
            return
        agent = self.registry.agents.get(recipient)
        if agent is None:
            outbox.dead_letter(db, seq, owner, f"{recipient!r} is not in the registry")
            return
        body = row["body"].encode()
        headers = sign(self.agent, self.key, "POST", "/message", "", body)
        headers["Content-Type"] = "application/json"
        try:
            with session.post(f"{agent.gateway_url}/message", data=body, headers=headers,
                              timeout=self.settings.http_timeout) as response:
                status, text = response.status_code, response.text[:500]
        except requests.RequestException as exc:
            status, text = 0, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= status < 300:
            outbox.delivered(db, seq, owner)
        elif status in PERMANENT:
            outbox.dead_letter(db, seq, owner, f"refused by {recipient}: HTTP {status}", text)
        elif attempts >= self.settings.max_attempts:
            error = f"HTTP {status}: {text}" if status else text
            outbox.dead_letter(db, seq, owner, f"gave up after {attempts} attempts", error)
        else:
            error = f"HTTP {status}: {text}" if status else text
            outbox.retry(db, seq, owner, time.time() + self.settings.backoff(attempts), error)
