"""systemd ``EnvironmentFile=`` syntax (``man systemd.exec``): writing values so that they
reach the service exactly, and reading such files back (for masked diffs).

Every value is written double-quoted: inside double quotes systemd keeps every character as
it is (newlines, quotes of the other kind, spaces at either end) except that ``\\`` escapes
``"``, ``\\``, ``$`` and `````; so those four get a backslash. What no env file can hold (a
NUL, U+FEFF, a Unicode noncharacter or surrogate) is refused, naming the variable only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from fleet.errors import SecretsError

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


def parse_env(text: str) -> Iterator[tuple[str, str]]:
    """The ``(name, value)`` assignments of an env file, as systemd reads it."""
    for name, value, _ in parse_env_entries(text):
        yield name, value


def parse_env_entries(text: str) -> Iterator[tuple[str, str, str]]:
    """``(name, value, source text)`` of each assignment of an env file, as systemd reads it
    (its parser's states: keys, unquoted values with backslash escapes and line continuation,
    single- and double-quoted values spanning lines, ``#``/``;`` comments)."""
    state, key, value, start = "pre_key", "", "", 0
    text += _NEWLINE
    for index, char in enumerate(text):
        if state == "pre_key":
            if char in "#;":
                state = "comment"
            elif char not in _WHITESPACE + _NEWLINE:
                state, key, start = "key", char, index
        elif state == "key":
            if char == _NEWLINE:
                state, key = "pre_key", ""
            elif char == "=":
                state, value, key = "pre_value", "", key.rstrip(_WHITESPACE)
            else:
                key += char
        elif state == "pre_value":
            if char == _NEWLINE:
                yield key, value, text[start:index]
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
                yield key, value.rstrip(_WHITESPACE), text[start:index]
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
        yield key, value, text[start:-1]
