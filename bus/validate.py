"""Validation of bus messages: one clear message per bad field, nothing raised.

Two layers: :func:`parse_json` and :func:`value_problem` refuse what JSON allows but the
store cannot keep (``NaN``/``Infinity``, lone UTF-16 surrogates, nesting deeper than
:data:`MAX_DEPTH`); :func:`message_problems` checks fields against the schema of
:mod:`bus.schema` (the one ``/openapi.json`` publishes) and an expired ``ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from bus import strictjson
from bus.schema import TYPES, message_schema, schema_problems
from bus.timestamps import parse_timestamp

__all__ = [
    "MAX_DEPTH",
    "TYPES",
    "JSONError",
    "expired",
    "fields_problems",
    "message_problems",
    "parse_json",
    "parse_timestamp",
    "value_problem",
]
MAX_DEPTH = 32


class JSONError(ValueError):
    """A body that is not JSON the bus takes; the message says why."""


def parse_json(body: bytes | str) -> Any:
    """The JSON value of ``body``; :class:`JSONError` for invalid JSON, ``NaN``,
    ``Infinity`` (also as an overflowing number such as ``1e400``) or nesting too deep to
    decode."""
    try:
        return strictjson.loads(body)
    except strictjson.NonFiniteNumber as exc:
        raise JSONError(str(exc)) from None
    except RecursionError:
        raise JSONError(f"nested deeper than {MAX_DEPTH} levels (the limit)") from None
    except ValueError as exc:
        raise JSONError(f"not valid JSON: {exc}") from None


def value_problem(value: Any, depth: int = MAX_DEPTH) -> str | None:
    """What makes ``value`` unstorable: nesting deeper than ``depth`` levels, or a string
    (key or value) that is not valid Unicode (a lone surrogate); None if it is fine."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level > depth:
            return f"nested deeper than {depth} levels (the limit)"
        if isinstance(item, str):
            strings: list[str] = [item]
        elif isinstance(item, dict):
            strings = [key for key in item if isinstance(key, str)]
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            strings = []
            stack.extend((child, level + 1) for child in item)
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return (f"contains a lone UTF-16 surrogate ({ascii(text)[:40]}), which is not "
                        "valid Unicode; send UTF-8 text")
    return None


def fields_problems(schema: dict[str, Any], data: object) -> dict[str, str]:
    """Problems of ``data`` by field: unstorable values first, then the schema's rules."""
    if isinstance(data, dict):
        unstorable = {str(name): problem for name, value in data.items()
                      if (problem := value_problem(value if name == "payload" else [value])
                          or value_problem(name))}
        if unstorable:
            return {ascii(name)[1:-1]: problem for name, problem in unstorable.items()}
    return schema_problems(schema, data)


def message_problems(data: object, agents: Collection[str], me: str) -> dict[str, str]:
    """Problems of a message received by agent ``me``; empty when it may be stored."""
    return fields_problems(message_schema(agents, me), data)


def expired(message: dict[str, Any], now: float | None = None) -> bool:
    """Whether a valid message's ``ttl`` ran out (counted from its ``timestamp``)."""
    if message.get("ttl") is None:
        return False
    sent = parse_timestamp(message["timestamp"])
    assert sent is not None
    return sent.timestamp() + float(message["ttl"]) < (time.time() if now is None else now)
