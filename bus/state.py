"""What a mounted bus knows: :class:`BusState`, kept in ``app.extensions["bus"]``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from flask import current_app

from bus.keys import PublicKey, SigningKey

if TYPE_CHECKING:
    from bus.watch import InboxWatch
    from bus.worker import DeliveryWorker, Settings
    from bus.writer import GroupWriter


class Address(Protocol):
    """Where an agent's gateway listens (:class:`fleet.core.registry.Agent` is one)."""

    @property
    def host(self) -> str:
        """Host name or address."""

    @property
    def gateway_port(self) -> int:
        """TCP port of its gateway."""


@dataclass
class BusState:
    """One mounted bus: whose it is, the fleet it talks to, its store and its worker."""

    agent: str                      # the agent this gateway serves
    keys: Mapping[str, PublicKey]   # trusted key id -> public key (bus.keys)
    agents: Mapping[str, Address]   # the fleet: agent name -> gateway address
    store: Path                     # bus.sqlite3
    writer: GroupWriter
    settings: Settings
    watch: InboxWatch               # wakes the long polls (at most BUS_MAX_LONG_POLLS)
    max_body: int = 256 * 1024      # bytes, every route of the app
    inbox_quota: int = 50_000       # unacknowledged messages per sender
    max_wait_ms: int = 5_000        # the longest long poll of GET /messages (a restart
    # waits for the long polls in flight: kept short)
    worker: DeliveryWorker | None = field(default=None)
    signer: SigningKey | None = None  # this agent's own key: its outbox is sent with it


def state() -> BusState:
    """The bus mounted on the current app (:class:`bus.Bus`)."""
    found: BusState = current_app.extensions["bus"]
    return found
