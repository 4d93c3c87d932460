"""The built-in runtime's settings from the agent's ``config:`` mapping in the registry, checked
with their types when the registry is validated (:func:`runtime_config_problems`), so a bad
value is refused there, naming the key, instead of crash-looping the runtime on the node.

Imports nothing from :mod:`fleet`: the registry (to validate) and the runtime (to run) read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_TOKENS_LIMIT = 1_000_000
MODEL_CHECK_LIMIT_S = 86_400
MAX_TEMPERATURE = 2
MAX_TURNS = 1000
MAX_MEMORY_CHARS = 1_000_000
MAX_KEEP_DAYS = 3650


class RuntimeConfigError(ValueError):
    """The agent's ``config:`` gives the runtime a value it cannot use."""


@dataclass(frozen=True)
class MemorySettings:
    """How much of a conversation the runtime remembers (``config: {memory: {...}}``).

    + turns: the most earlier turns (a prompt and its answer) sent with a new prompt
    + max_chars: the most characters of earlier turns sent with a new prompt (the newest
      turns that fit both bounds are sent)
    + keep_days: turns older than this many days are deleted
    """

    turns: int = 20
    max_chars: int = 16_000
    keep_days: int = 30


@dataclass(frozen=True)
class RuntimeSettings:
    """What the built-in runtime reads from ``config:``.

    + max_tokens: the most tokens one answer may take (default 256)
    + model_check_s: seconds between the runtime's checks of its provider while idle (a
      1-token round trip; 0 turns the check off)
    + temperature: the sampling temperature of every answer (0: always the likeliest token,
      the same answer to the same prompt); None: the provider's default
    + memory: the bounds of conversation memory (:class:`MemorySettings`)
    """

    max_tokens: int = 256
    model_check_s: float = 60.0
    temperature: float | None = None
    memory: MemorySettings = MemorySettings()


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Rule:
    """What one ``config:`` key must hold, and how a refusal describes it."""

    accepts: Callable[[Any], bool]  # the type check
    low: int
    high: int
    kind: str  # e.g. "a whole number"
    meaning: str
    example: str


_RULES = {  # the keys the runtime reads, in the order their problems are listed
    "max_tokens": _Rule(_whole, 1, MAX_TOKENS_LIMIT, "a whole number",
                        "the most tokens one answer may take", "256"),
    "model_check_s": _Rule(_number, 0, MODEL_CHECK_LIMIT_S, "a number of seconds",
                           "how often an idle runtime checks its model; 0 = never", "60"),
    "temperature": _Rule(_number, 0, MAX_TEMPERATURE, "a number",
                         "the sampling temperature; 0 = always the likeliest token", "0.7"),
}
_MEMORY_RULES = {  # the keys of ``memory:``
    "turns": _Rule(_whole, 0, MAX_TURNS, "a whole number",
                   "the most earlier turns sent with a prompt", "20"),
    "max_chars": _Rule(_whole, 0, MAX_MEMORY_CHARS, "a whole number",
                       "the most characters of earlier turns sent with a prompt", "16000"),
    "keep_days": _Rule(_whole, 1, MAX_KEEP_DAYS, "a whole number",
                       "days a turn is kept", "30"),
}
NESTED_KEYS = ("memory",)
"""The ``config:`` keys of the runtime that hold a mapping (every other value is a scalar)."""
MEMORY_EXAMPLE = "memory: {turns: 20, max_chars: 16000, keep_days: 30}"


def _problems(config: Mapping[str, Any], rules: Mapping[str, _Rule], prefix: str = "",
              example: str = "{key}: {value}") -> list[str]:
    problems = []
    for key, rule in rules.items():
        if key not in config:
            continue
        value = config[key]
        if not rule.accepts(value) or not rule.low <= value <= rule.high:
            shown = example.format(key=key, value=rule.example)
            problems.append(f"{prefix}{key} {value!r} is not {rule.kind} from {rule.low} to "
                            f"{rule.high} ({rule.meaning}), e.g. {shown}")
    return problems


def runtime_config_problems(config: Mapping[str, Any]) -> list[str]:
    """Why ``config`` (an agent's ``config:``) cannot drive its runtime; empty when it can.
    Keys the runtime does not read are the agent's own and pass; ``memory:`` is the
    runtime's and takes only its own keys."""
    problems = _problems(config, _RULES)
    if "memory" not in config:
        return problems
    memory = config["memory"]
    if not isinstance(memory, Mapping):
        return [*problems, f"memory {memory!r} is not a mapping of "
                           f"{', '.join(_MEMORY_RULES)}, e.g. {MEMORY_EXAMPLE}"]
    problems += [f"memory.{key} is not a memory setting (settings: "
                 f"{', '.join(_MEMORY_RULES)}), e.g. {MEMORY_EXAMPLE}"
                 for key in memory if key not in _MEMORY_RULES]
    return problems + _problems(memory, _MEMORY_RULES, "memory.",
                                "memory: {{{key}: {value}}}")


def runtime_settings(config: Mapping[str, Any]) -> RuntimeSettings:
    """The runtime's settings from ``config`` (:class:`RuntimeConfigError` naming every bad
    key)."""
    problems = runtime_config_problems(config)
    if problems:
        raise RuntimeConfigError("config: " + "; ".join(problems))
    defaults = RuntimeSettings()
    memory = config.get("memory") or {}
    remembered = MemorySettings(**{key: int(memory.get(key, getattr(defaults.memory, key)))
                                   for key in _MEMORY_RULES})
    return RuntimeSettings(
        memory=remembered, max_tokens=int(config.get("max_tokens", defaults.max_tokens)),
        model_check_s=float(config.get("model_check_s", defaults.model_check_s)),
        temperature=None if config.get("temperature") is None
        else float(config["temperature"]))
