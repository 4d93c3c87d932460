"""Conversation memory of the built-in runtime: ``memory.db`` (SQLite, WAL) in the agent's
state dir.

A request that names a ``conversation`` gets that conversation's recent turns sent with it;
its own turn (the prompt, the answer, the whole response payload) is stored once, keyed by
``(peer, request id)``, before the response is sent (:func:`store_turn`). A request handled
again after a crash finds its stored turn (:func:`stored_reply`) and sends the same payload
again, without asking the model: the memory and the response agree.

Conversations are scoped by their sender (``peer``): another agent naming the same id has a
conversation of its own. The runtime writes; the gateway reads and forgets
(:mod:`fleet.node.gateway.memory`). Turns older than ``keep_days`` go when a turn is
written.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

from bus import replay
from bus.sqlite import immediate, store
from fleet.core.runtime_config import MemorySettings

STORE = "memory.db"
MAX_CONVERSATION = 128
CONVERSATION_RE = re.compile(rf"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{{1,{MAX_CONVERSATION}}}")
CONVERSATION_RULE = (f"1 to {MAX_CONVERSATION} printable characters (no control characters, "
                     "no line breaks, no surrogates)")
PEER_RULE = "an agent's or identity's name (a-z, digits, '-'; up to 31 characters)"
DAY_S = 86_400.0
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS turns (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL, conversation TEXT NOT NULL,
    request_id TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL, reply TEXT NOT NULL,
    at REAL NOT NULL, UNIQUE (peer, request_id))""",
    "CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (peer, conversation, seq)",
    "CREATE INDEX IF NOT EXISTS turns_by_age ON turns (at)",
)


class Turn(TypedDict):
    """One stored turn: a prompt and the answer it got."""

    seq: int
    peer: str
    conversation: str
    request_id: str
    prompt: str
    answer: str
    at: float


class Conversation(TypedDict):
    """One conversation as ``GET /memory`` lists it."""

    peer: str
    conversation: str
    turns: int
    last_at: float


def is_conversation(value: object) -> bool:
    """Whether ``value`` is a conversation id: :data:`CONVERSATION_RULE`."""
    return (isinstance(value, str) and CONVERSATION_RE.fullmatch(value) is not None
            and value.isprintable())


def shown(value: object) -> str:
    """``value`` in a message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def conversation_of(payload: Any) -> str | None:
    """The conversation a request's payload names (None: a one-off request); ValueError
    naming the rule when it names one that is not an id."""
    if not isinstance(payload, dict) or "conversation" not in payload:
        return None
    value = payload["conversation"]
    if not is_conversation(value):
        raise ValueError(f"conversation {shown(value)} is not a conversation id: send "
                         f"{CONVERSATION_RULE}, or no conversation for a one-off request")
    return str(value)


def path_of(state_dir: str | Path) -> Path:
    return Path(state_dir) / STORE


@contextmanager
def connect(state_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """The memory store (created on first use, WAL), closed again on leaving."""
    with store(path_of(state_dir), SCHEMA, "turns") as db:  # runtime and gateway may create
        yield db


def recent(state_dir: str | Path, peer: str, conversation: str, settings: MemorySettings,
           now: float | None = None) -> list[dict[str, str]]:
    """The conversation's newest turns that fit ``settings.turns`` and ``settings.max_chars``
    (prompt and answer counted), oldest first, as chat messages (user, assistant pairs);
    none older than ``keep_days`` (even before they are deleted)."""
    if settings.turns == 0:
        return []
    since = (time.time() if now is None else now) - settings.keep_days * DAY_S
    with connect(state_dir) as db:
        rows = db.execute("SELECT prompt, answer FROM turns WHERE peer = ? AND "
                          "conversation = ? AND at >= ? ORDER BY seq DESC LIMIT ?",
                          (peer, conversation, since, settings.turns)).fetchall()
    kept: list[sqlite3.Row] = []
    chars = 0
    for row in rows:
        chars += len(row["prompt"]) + len(row["answer"])
        if chars > settings.max_chars:
            break
        kept.append(row)
    messages: list[dict[str, str]] = []
    for row in reversed(kept):
        messages += [{"role": "user", "content": row["prompt"]},
                     {"role": "assistant", "content": row["answer"]}]
    return messages


def stored_reply(state_dir: str | Path, peer: str, request_id: str) -> dict[str, Any] | None:
    """The response payload stored with the turn of ``peer``'s request ``request_id`` (None:
    no turn was stored for it)."""
    with connect(state_dir) as db:
        row = db.execute("SELECT reply FROM turns WHERE peer = ? AND request_id = ?",
                         (peer, request_id)).fetchone()
    if row is None:
        return None
    reply: dict[str, Any] = json.loads(row["reply"])
    return reply


def store_turn(state_dir: str | Path, peer: str, conversation: str, request_id: str,
               prompt: str, reply: dict[str, Any], settings: MemorySettings,
               now: float | None = None) -> dict[str, Any]:
    """Store the turn of ``peer``'s request ``request_id`` in one transaction, once: the
    payload to send, which is the one stored first when the request was stored before (a
    crash after the store). Turns older than ``keep_days`` are deleted in the same
    transaction."""
    at = time.time() if now is None else now
    with connect(state_dir) as db, immediate(db):
        db.execute("DELETE FROM turns WHERE at < ?", (at - settings.keep_days * DAY_S,))
        db.execute("INSERT INTO turns (peer, conversation, request_id, prompt, answer, reply, "
                   "at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (peer, request_id) DO NOTHING",
                   (peer, conversation, request_id, prompt, str(reply.get("text") or ""),
                    json.dumps(reply), at))
        row = db.execute("SELECT reply FROM turns WHERE peer = ? AND request_id = ?",
                         (peer, request_id)).fetchone()
    stored: dict[str, Any] = json.loads(row["reply"])
    return stored


def conversations(state_dir: str | Path) -> list[Conversation]:
    """Every remembered conversation, the latest first."""
    if not path_of(state_dir).exists():
        return []
    with connect(state_dir) as db:
        rows = db.execute("SELECT peer, conversation, COUNT(*) AS turns, MAX(at) AS last_at "
                          "FROM turns GROUP BY peer, conversation "
                          "ORDER BY last_at DESC").fetchall()
    return [Conversation(peer=row["peer"], conversation=row["conversation"],
                         turns=row["turns"], last_at=row["last_at"]) for row in rows]


def turns(state_dir: str | Path, peer: str, conversation: str) -> list[Turn]:
    """The conversation's stored turns, oldest first."""
    if not path_of(state_dir).exists():
        return []
    with connect(state_dir) as db:
        rows = db.execute("SELECT seq, peer, conversation, request_id, prompt, answer, at "
                          "FROM turns WHERE peer = ? AND conversation = ? ORDER BY seq",
                          (peer, conversation)).fetchall()
    return [Turn(seq=row["seq"], peer=row["peer"], conversation=row["conversation"],
                 request_id=row["request_id"], prompt=row["prompt"], answer=row["answer"],
                 at=row["at"]) for row in rows]


def forget(state_dir: str | Path, peer: str, conversation: str,
           once: tuple[str, str] | None = None) -> int:
    """Delete the conversation's turns; how many there were (0: none). ``once``: the
    ``(caller, request id)`` of the signed request asking, claimed in the same transaction
    (:func:`bus.replay.claim`: :class:`bus.replay.ReplayError` for a replay, and nothing is
    deleted)."""
    if once is None and not path_of(state_dir).exists():
        return 0
    with connect(state_dir) as db, immediate(db):
        if once is not None:
            replay.prune(db)
            replay.claim(db, *once)
        return db.execute("DELETE FROM turns WHERE peer = ? AND conversation = ?",
                          (peer, conversation)).rowcount
