"""systemd ``EnvironmentFile=`` syntax (``man systemd.exec``): writing values so that they
reach the service exactly, and reading such files back the way systemd does (for masked
diffs, and the webhook receiver's config file).

Every value is written double-quoted: inside double quotes systemd keeps every character as
it is (newlines, quotes of the other kind, spaces at either end) except that ``\\`` escapes
``"``, ``\\``, ``$`` and `````; so those four get a backslash. What no env file can hold (a
NUL, U+FEFF, a Unicode noncharacter or surrogate) is refused, naming the variable only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from fleet.core.errors import SecretsError

NEED_ESCAPE = '"\\`$'
_UNREPRESENTABLE = re.compile("[\0\ufeff\ufdd0-\ufdef\ud800-\udfff]")
_WHITESPACE = " \t\r"  # what systemd strips around unquoted values and keys
_NEWLINE = "\n"


class EnvFileError(SecretsError):
    """A value cannot be written to a systemd environment file."""


def _noncharacter(value: str) -> bool:
    return any((ord(char) & 0xFFFE) == 0xFFFE for char in value)


def quote(name: str, value: str) -> str:
    """``value`` double-quoted for an env file; :class:`EnvFileError` naming ``name`` (never the
    value) when systemd could not hold it."""
    if _UNREPRESENTABLE.search(value) or _noncharacter(value):
        raise EnvFileError(
            f"{name}: the value holds a character a systemd environment file cannot carry "
            "(NUL, U+FEFF, a Unicode noncharacter or surrogate)",
            hint="Remove that character from the value in the secrets file.")
    escaped = "".join(f"\\{char}" if char in NEED_ESCAPE else char for char in value)
    return f'"{escaped}"'


def format_env(env: Mapping[str, str]) -> str:
    """An env file: one ``NAME="value"`` assignment per variable (values may span lines)."""
    return "".join(f"{name}={quote(name, value)}\n" for name, value in env.items())


class EnvEntry(NamedTuple):
    """One assignment of an env file as systemd reads it: ``name``, ``value``, its ``source``
    text and the ``line`` it starts on; ``problem`` (said of the name) is why systemd ignores
    it (the line has no ``=``, the name is no variable name) or reads it oddly (a quote never
    closed runs to the end of the file)."""

    name: str
    value: str
    source: str
    line: int
    problem: str = ""

    @property
    def applied(self) -> bool:
        """Whether systemd sets this variable."""
        return not self.problem or self.problem == UNTERMINATED


UNTERMINATED = "has a value whose quote is never closed (systemd reads on to the end of the file)"
NOT_ASSIGNMENT = "is not KEY=value"
BAD_NAME = "is not a variable name (letters, digits and '_', not starting with a digit)"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env_entries(text: str) -> Iterator[EnvEntry]:
    """The assignments systemd applies from an env file (see :func:`scan_env`)."""
    return (entry for entry in scan_env(text) if entry.applied)


def scan_env(text: str) -> Iterator[EnvEntry]:
    """Every entry of an env file, as systemd's parser meets it (its states: keys, unquoted
    values with backslash escapes and line continuation, single- and double-quoted values
    spanning lines, ``#``/``;`` comments); those systemd skips carry a ``problem``."""
    state, key, value, start = "pre_key", "", "", 0
    text += _NEWLINE

    def entry(end: int, problem: str = "") -> EnvEntry:
        if not problem and not _NAME.fullmatch(key):
            problem = BAD_NAME
        return EnvEntry(key, value, text[start:end], text.count(_NEWLINE, 0, start) + 1, problem)

    for index, char in enumerate(text):
        if state == "pre_key":
            if char in "#;":
                state = "comment"
            elif char not in _WHITESPACE + _NEWLINE:
                state, key, start = "key", char, index
        elif state == "key":
            if char == _NEWLINE:
                key = key.rstrip(_WHITESPACE)
                yield entry(index, NOT_ASSIGNMENT)
                state, key = "pre_key", ""
            elif char == "=":
                state, value, key = "pre_value", "", key.rstrip(_WHITESPACE)
            else:
                key += char
        elif state == "pre_value":
            if char == _NEWLINE:
                yield entry(index)
                state = "pre_key"
            elif char == "'":
                state = "single"
            elif char == '"':
                state = "double"
            elif char == "\\":
                state = "escape"
            elif char not in _WHITESPACE:
                state, value = "value", value + char
        elif state == "value":
            if char == _NEWLINE:
                value = value.rstrip(_WHITESPACE)
                yield entry(index)
                state = "pre_key"
            elif char == "\\":
                state = "escape"
            else:
                value += char
        elif state == "escape":
            state = "value"
            value += "" if char == _NEWLINE else char
        elif state == "single":
            state, value = ("pre_value", value) if char == "'" else (state, value + char)
        elif state == "double":
            if char == '"':
                state = "pre_value"
            elif char == "\\":
                state = "double_escape"
            else:
                value += char
        elif state == "double_escape":
            state = "double"
            if char in NEED_ESCAPE:
                value += char
            elif char != _NEWLINE:
                value += "\\" + char
        elif state == "comment":
            if char == "\\":
                state = "comment_escape"
            elif char == _NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":
            state = "comment"
    if state in ("single", "double", "double_escape"):  # unterminated quote: systemd keeps it
        yield entry(len(text) - 1, UNTERMINATED)
