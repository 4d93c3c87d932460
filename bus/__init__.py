"""The inter-agent message bus: durable, signed, brokerless -- a Flask extension.

Each agent's gateway receives messages into its own SQLite store (``<STATE_DIR>/
bus.sqlite3``) and delivers its outbox with a background worker. Mount it on any Flask
app::

    bus = Bus(app, agents=registry.agents)              # or Bus(); bus.init_app(app, ...)

Its state (:class:`bus.state.BusState`) lives in ``app.extensions["bus"]``; the store layer
(:mod:`bus.store`, :mod:`bus.writer`) knows nothing of Flask, and nothing here imports the
app that mounts it.

Endpoints and who may call them:

- ``POST /message``, ``POST /messages/batch``, ``POST /a2a`` -- any fleet agent, signed with
  its own Ed25519 key (RFC 9421 HTTP Message Signatures, see :mod:`bus.signing`,
  :mod:`bus.keys`); ``from`` must be the signer.
- ``GET /messages``, ``POST /messages/ack``, ``POST /outbox``, ``GET /bus/stats``,
  ``GET /bus/dead-letters``, ``POST /bus/dead-letters/redrive`` -- signed with this agent's
  own key or the operator's (``operator``: the ``fleet bus`` CLI); other agents get 403. The
  webhook receiver's key (``receiver``) may queue ``alert`` messages (``POST /outbox``) only.
- ``GET /metrics``, ``GET /openapi.json`` -- public (counts and schema, no content).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus.extension import Bus
    from bus.sending import send

__all__ = ["Bus", "send"]


def __getattr__(name: str) -> Any:
    """``Bus`` and ``send``, imported when first used: the Flask-free modules
    (:mod:`bus.keys`, :mod:`bus.signing`, the store) load without Flask."""
    if name == "Bus":
        from bus.extension import Bus

        return Bus
    if name == "send":
        from bus.sending import send

        return send
    raise AttributeError(f"module 'bus' has no attribute {name!r}")
