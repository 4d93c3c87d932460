"""The delivery worker: background threads in the gateway process that empty the outbox.

Each thread claims due rows with a lease, POSTs them signed to the recipient's gateway
(:mod:`bus.delivery`: ``/message``, or ``/messages/batch`` for a backlog) and then
deletes, reschedules (exponential backoff with jitter) or dead-letters them. A recipient
that cannot be reached is backed off as a whole: its due rows wait together instead of each
hammering a host that is down.
``wake()`` starts delivery at once after a send; idle threads also poll, so retries and rows
queued by other processes go out too. One thread also prunes acknowledged inbox messages
and sent ids older than the retention time; dead letters stay until an operator re-sends
(``redrive``) them.

The default schedule outlasts a receiver that is down for a day: the wait between attempts
doubles from ``retry_base`` up to ``retry_max`` (5 min), each jittered (50-100 %), and a row is
given up only once it is older than ``give_up_after`` (3 days); ``max_attempts`` (0: none)
can cap the attempts too. A 429 (the receiver's inbox quota) is retried after its
``Retry-After``.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bus import inbox_store, outbox
from bus.delivery import EXPIRED, Sender
from bus.keys import SigningKey
from bus.state import Address
from bus.store import connect
from bus.writer import GroupWriter

log = logging.getLogger(__name__)
PERMANENT = (400, 413, 415)  # the recipient will never accept this message
RETRY_AFTER_429 = inbox_store.RETRY_AFTER * 0.5  # jittered like the backoff
PRUNE_EVERY = 600  # seconds between deletions of old acknowledged messages


@dataclass(frozen=True)
class Settings:
    """Delivery tuning (``BUS_*`` app settings; the gateway reads them from ``FLEET_BUS_*``)."""

    max_attempts: int = 0  # 0: no cap; rows are given up by age (give_up_after)
    retry_base: float = 0.5
    retry_max: float = 300.0
    give_up_after: float = 3 * 86400.0
    lease_seconds: float = 30.0
    threads: int = 4
    batch: int = 64
    poll_seconds: float = 1.0
    http_timeout: float = 5.0
    retention_days: float = 7.0

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from ``retry_base``, jittered."""
        ceiling = min(self.retry_max, self.retry_base * 2.0 ** min(attempts - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    def gives_up(self, attempts: int, created_at: float, now: float) -> bool:
        """Whether a row queued at ``created_at`` that failed ``attempts`` times is dead."""
        return self.give_up_reason(attempts, created_at, now) is not None

    def give_up_reason(self, attempts: int, created_at: float, now: float) -> str | None:
        """Why a row queued at ``created_at`` that failed ``attempts`` times is dead, naming
        the limit that decided (its age, or the attempt cap); None while it is not."""
        if now - created_at > self.give_up_after:
            return outbox.horizon_reason(self.give_up_after, attempts)
        if self.max_attempts and attempts >= self.max_attempts:
            return outbox.attempts_reason(self.max_attempts)
        return None


class DeliveryWorker:
    """Delivers one agent's outbox; one instance per gateway process."""

    def __init__(self, store: Path, writer: GroupWriter, agent: str, key: SigningKey,
                 agents: Mapping[str, Address], settings: Settings) -> None:
        self.store, self.writer, self.agent, self.key = store, writer, agent, key
        self.agents, self.settings = agents, settings
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
                owner = f"{outbox.process_tag()}:{token}:{number}"
                thread = threading.Thread(target=self._run, args=(owner, number == 0),
                                          daemon=True,
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

    def _run(self, owner: str, prunes: bool) -> None:
        db = connect(self.store)
        sender = Sender(self.key, self.settings.http_timeout)
        pruned = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if prunes and time.monotonic() - pruned > PRUNE_EVERY:
                        before = time.time() - self.settings.retention_days * 86400
                        self.writer.run(partial(inbox_store.prune, before=before))
                        pruned = time.monotonic()
                    self._cycle(db, sender, owner)
                except Exception:  # keep delivering whatever one cycle hit
                    log.exception("bus delivery cycle failed")
                    self._stop.wait(self.settings.poll_seconds)
        finally:
            sender.close()
            db.close()

    def _cycle(self, db: sqlite3.Connection, sender: Sender, owner: str) -> None:
        """Claim a batch and deliver it; with nothing due, sleep until woken or due."""
        with self._wakeup:
            seen = self._generation
        now = time.time()
        down = {name: until for name, (until, _) in list(self._unreachable.items())
                if until > now}
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
        outcomes: list[outbox.Outcome] = []
        groups: dict[str, list[sqlite3.Row]] = {}
        for row in rows:
            if row["expires_at"] is not None and time.time() > row["expires_at"]:
                outcomes.append(outbox.Outcome(row["seq"], dead_reason="ttl expired"))
            elif row["recipient"] not in self.agents:
                outcomes.append(outbox.Outcome(
                    row["seq"], dead_reason=f"{row['recipient']!r} is not in the registry"))
            else:
                groups.setdefault(row["recipient"], []).append(row)
        for recipient, group in groups.items():
            results = sender.send(self.agents[recipient], [r["body"] for r in group])
            outcomes += [self._outcome(row, status, detail, failed)
                         for row, (status, detail) in zip(group, results, strict=True)]
        horizon = time.time() - self.settings.give_up_after
        self.writer.run(lambda w: outbox.finish(w, owner, outcomes, failed,
                                                 self.settings.max_attempts, horizon))

    def _outcome(self, row: sqlite3.Row, status: int, detail: str,
                 down: dict[str, tuple[float, str]]) -> outbox.Outcome:
        """What to do with a row after an attempt answered ``status`` (0: unreachable)."""
        seq, recipient, attempts = row["seq"], row["recipient"], row["attempts"]
        error = f"HTTP {status}: {detail}" if status else detail
        if status == EXPIRED:
            return outbox.Outcome(seq, dead_reason="ttl expired", error=f"{recipient}: {detail}")
        if 200 <= status < 300:
            self._unreachable.pop(recipient, None)
            return outbox.Outcome(seq)
        if status in PERMANENT:
            return outbox.Outcome(seq, dead_reason=f"refused by {recipient}: HTTP {status}",
                                  error=detail)
        reason = self.settings.give_up_reason(attempts, row["created_at"], time.time())
        if reason is not None:
            return outbox.Outcome(seq, dead_reason=reason, error=error)
        retry_at = time.time() + self.settings.backoff(attempts)
        if status == 429:  # the receiver's inbox quota: come back when it says
            retry_at = max(retry_at, time.time() + RETRY_AFTER_429)
        if status == 0 and recipient not in down:
            # unreachable: back off the whole recipient (this process skips it until then)
            failures = self._unreachable.get(recipient, (0.0, 0))[1] + 1
            retry_at = time.time() + self.settings.backoff(failures)
            self._unreachable[recipient] = (retry_at, failures)
            down[recipient] = (retry_at, error)
        elif status == 0:
            retry_at = down[recipient][0]
        return outbox.Outcome(seq, retry_at=retry_at, error=error)
