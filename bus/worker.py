"""The delivery worker: background threads in the gateway process that empty the outbox.

Each thread claims due rows with a lease, POSTs them signed to the recipient's gateway
(``Agent.gateway_url`` + ``/message``) and then deletes, reschedules (exponential backoff
with jitter) or dead-letters them. A recipient that cannot be reached is backed off as a
whole: its due rows wait together instead of each hammering a host that is down.
``wake()`` starts delivery at once after a send; idle threads also poll, so retries and rows
queued by other processes go out too.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bus import outbox
from bus.db import connect
from bus.signing import sign
from bus.writer import GroupWriter
from fleet.registry import Agent, Registry

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

    def __init__(self, store: Path, writer: GroupWriter, agent: str, key: str,
                 registry: Registry, settings: Settings) -> None:
        self.store, self.writer, self.agent, self.key = store, writer, agent, key
        self.registry, self.settings = registry, settings
        self._wakeup = threading.Condition()
        self._generation = 0  # bumped by every wake(), so no wake-up is lost
        self._stop = threading.Event()
        self._unreachable: dict[str, tuple[float, int]] = {}  # name -> (until, failures)
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
        """A message was queued: one idle thread delivers it now instead of at the next poll."""
        with self._wakeup:
            self._generation += 1
            self._wakeup.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (rows they hold are leased until they expire)."""
        self._stop.set()
        with self._wakeup:
            self._wakeup.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._pid = 0

    def _run(self, owner: str) -> None:
        db = connect(self.store)
        connections = Connections(self.settings.http_timeout)
        try:
            while not self._stop.is_set():
                try:
                    self._cycle(db, connections, owner)
                except Exception:  # keep delivering whatever one cycle hit
                    log.exception("bus delivery cycle failed")
                    self._stop.wait(self.settings.poll_seconds)
        finally:
            connections.close()
            db.close()

    def _cycle(self, db: sqlite3.Connection, connections: Connections, owner: str) -> None:
        """Claim a batch and deliver it; with nothing due, sleep until woken or due."""
        with self._wakeup:
            seen = self._generation
        now = time.time()
        down = {name: until for name, (until, _) in self._unreachable.items() if until > now}
        rows: list[sqlite3.Row] = []
        if outbox.has_due(db, down, now):
            rows = self.writer.run(lambda w: outbox.claim(
                w, owner, self.settings.lease_seconds, self.settings.batch, down))
        if not rows:
            due = [when for when in (outbox.next_due(db, down), *down.values()) if when]
            wait = min([self.settings.poll_seconds, *(when - now for when in due)])
            with self._wakeup:
                if self._generation == seen and not self._stop.is_set():
                    self._wakeup.wait(max(0.001, wait))
            return
        failed: dict[str, tuple[float, str]] = {}
        outcomes = [self._attempt(connections, row, failed) for row in rows]
        self.writer.run(lambda w: outbox.finish(w, owner, outcomes, failed,
                                                 self.settings.max_attempts))

    def _attempt(self, connections: Connections, row: sqlite3.Row,
                 down: dict[str, tuple[float, str]]) -> outbox.Outcome:
        """Send one claimed row (unless its recipient is already down in this batch)."""
        seq, recipient, attempts = row["seq"], row["recipient"], row["attempts"]
        if row["expires_at"] is not None and time.time() > row["expires_at"]:
            return outbox.Outcome(seq, dead_reason="ttl expired")
        agent = self.registry.agents.get(recipient)
        if agent is None:
            return outbox.Outcome(seq, dead_reason=f"{recipient!r} is not in the registry")
        if recipient in down:
            status, text = 0, down[recipient][1]
        else:
            status, text = self._post(connections, agent, row["body"])
        error = f"HTTP {status}: {text}" if status else text
        if 200 <= status < 300:
            self._unreachable.pop(recipient, None)
            return outbox.Outcome(seq)
        if status in PERMANENT:
            return outbox.Outcome(seq, dead_reason=f"refused by {recipient}: HTTP {status}",
                                  error=text)
        if attempts >= self.settings.max_attempts:
            return outbox.Outcome(seq, dead_reason=f"gave up after {attempts} attempts",
                                  error=error)
        retry_at = time.time() + self.settings.backoff(attempts)
        if status == 0 and recipient not in down:
            # unreachable: back off the whole recipient (this process skips it until then)
            failures = self._unreachable.get(recipient, (0.0, 0))[1] + 1
            retry_at = time.time() + self.settings.backoff(failures)
            self._unreachable[recipient] = (retry_at, failures)
            down[recipient] = (retry_at, error)
        elif status == 0:
            retry_at = down[recipient][0]
        return outbox.Outcome(seq, retry_at=retry_at, error=error)

    def _post(self, connections: Connections, agent: Agent, body_text: str) -> tuple[int, str]:
        """POST a signed message; (HTTP status, start of the answer), status 0 if unreachable."""
        body = body_text.encode()
        headers = sign(self.agent, self.key, "POST", "/message", "", body)
        headers["Content-Type"] = "application/json"
        return connections.post(agent, "/message", body, headers)


class Connections:
    """Keep-alive HTTP connections of one delivery thread, one per recipient gateway."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.open: dict[tuple[str, int], http.client.HTTPConnection] = {}

    def post(self, agent: Agent, path: str, body: bytes,
             headers: dict[str, str]) -> tuple[int, str]:
        """POST ``body``; a kept-alive connection the server closed is retried once."""
        address = (agent.host, agent.gateway_port)
        for fresh in (address not in self.open, True):
            connection = self.open.pop(address, None) or http.client.HTTPConnection(
                *address, timeout=self.timeout)
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                text = response.read()[:500].decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if fresh:
                    return 0, f"{type(exc).__name__}: {exc}"[:500]
                continue
            if response.will_close:
                connection.close()
            else:
                self.open[address] = connection
            return response.status, text
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every connection."""
        for connection in self.open.values():
            connection.close()
        self.open.clear()
