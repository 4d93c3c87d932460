"""JSON as RFC 8259 has it: Python's ``json`` also reads ``NaN`` and ``Infinity``, and turns a
number such as ``1e400`` into an infinite float; no store or peer can keep those. Used by the
bus and the webhook receiver for every body they read."""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteNumber(ValueError):
    """A ``NaN``/``Infinity`` constant, or a number too large for a float."""


def _constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number (RFC 8259); send a string or null")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is out of range for a JSON number (it would be "
                              "Infinity)")
    return value


def loads(text: str | bytes) -> Any:
    """``json.loads`` refusing non-finite numbers (:class:`NonFiniteNumber`, a ValueError);
    invalid JSON raises ValueError and nesting too deep for the parser RecursionError."""
    return json.loads(text, parse_constant=_constant, parse_float=_finite)
