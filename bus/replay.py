"""The replay guard of signed state-changing requests: the one owner, used by the tool API
(``POST /tools/NAME``), the memory API (``DELETE /memory``) and the dead-letter redrive.

A signature is valid for 300 s (:data:`bus.signing.WINDOW_SECONDS`), so a captured request
could be sent again within that window and change state a second time (forget turns stored
since, redrive letters that died since, run a tool again). Each such request has an id (the
caller's own, or :func:`bus.web.signature_id`: the same signed request sent again has the same
one; the signer adds a fresh ``nonce`` to every signature, so a request signed anew has
another); :func:`claim` records ``(caller, id)`` once, in the same write transaction as the
change the request makes, and refuses the pair again with :class:`ReplayError` (answered 409).
Claimed ids are kept for :data:`KEEP_IDS_S`, far past the signature window; :func:`prune`
drops older ones.
"""

from __future__ import annotations

import sqlite3
import time

from bus.errors import BusError
from bus.timestamps import utc_timestamp

KEEP_IDS_S = 24 * 3600.0
"""How long a claimed id refuses its replay (the signature window is 300 s)."""
SCHEMA = """CREATE TABLE IF NOT EXISTS call_ids (
    caller TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (caller, id))"""
SIGN_ANEW = "Sign the request anew (every fleet command and client does)."


class ReplayError(BusError):
    """``caller`` made the ``what`` with this id before (at ``at``; ``seq``: its number in
    the caller's record, when it keeps one): a replay."""

    def __init__(self, what: str, caller: str, request_id: str, at: float, seq: int = 0,
                 hint: str = SIGN_ANEW) -> None:
        self.seq, self.at = seq, at
        number = f" (call #{seq})" if seq else ""
        super().__init__(f"{what} {request_id!r} by {caller!r} was already made at "
                         f"{utc_timestamp(at)}{number}; a replayed {what.split()[-1]} is "
                         "refused", hint=hint)


def claim(db: sqlite3.Connection, caller: str, request_id: str, what: str = "request",
          seq: int = 0, hint: str = SIGN_ANEW, now: float | None = None) -> None:
    """Claim ``(caller, request_id)`` inside the caller's write transaction on ``db`` (the
    store the request changes); :class:`ReplayError` when it was claimed before (roll the
    transaction back: nothing of the request happens). ``seq``: the request's number in a
    record the caller keeps, named in the refusal."""
    db.execute(SCHEMA)
    seen = db.execute("SELECT seq, at FROM call_ids WHERE caller = ? AND id = ?",
                      (caller, request_id)).fetchone()
    if seen is not None:
        raise ReplayError(what, caller, request_id, seen[1], seen[0], hint)
    db.execute("INSERT INTO call_ids (caller, id, seq, at) VALUES (?, ?, ?, ?)",
               (caller, request_id, seq, time.time() if now is None else now))


def prune(db: sqlite3.Connection, now: float | None = None) -> None:
    """Drop the ids claimed more than :data:`KEEP_IDS_S` ago (inside the caller's
    transaction)."""
    db.execute(SCHEMA)
    db.execute("DELETE FROM call_ids WHERE at < ?",
               ((time.time() if now is None else now) - KEEP_IDS_S,))
