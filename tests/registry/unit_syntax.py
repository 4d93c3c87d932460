"""A reader of systemd unit files as ``systemd.syntax(7)`` and ``systemd.service(5)`` define
them, strict where systemd would interpret: the property tests read rendered units back with
it and compare with what the registry asked for.

- lines: ``[Section]``, ``Key=value`` (whitespace around both stripped), ``#``/``;`` comments;
  a line ending in an unescaped ``\\`` continues on the next (the backslash becomes a space;
  comment lines in between are skipped);
- words (``Environment=``, ``ExecStart=``): separated by whitespace, ``"..."`` and ``'...'``
  quoting, C escapes (``\\n``, ``\\xHH``, ``\\uXXXX``, ...) inside and outside quotes;
- specifiers: ``%%`` is ``%``; any other ``%X`` raises :class:`Interpreted`;
- ``ExecStart=``: a program starting with ``-@:+!|`` (flags) raises, ``$$`` is ``$``; any
  other ``$`` raises (systemd would expand a variable), and so does a bare ``;`` word.
"""

from __future__ import annotations

import re

WHITESPACE = " \t\n\r"
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'", "s": " "}


class Interpreted(ValueError):
    """systemd would read something in the value as more than text (a specifier, a variable,
    a flag, a separator) or the text is not valid unit syntax."""


def unit_lines(text: str) -> list[str]:
    """The logical lines of a unit file: continuation lines joined, comments dropped."""
    lines: list[str] = []
    continuation: str | None = None
    for raw in text.split("\n"):
        if continuation is not None:
            if raw.lstrip(WHITESPACE)[:1] in ("#", ";"):
                continue
            raw = continuation + raw
            continuation = None
        escaped = False
        for char in raw:
            escaped = not escaped if char == "\\" else False
        if escaped:
            continuation = raw[:-1] + " "
            continue
        line = raw.strip(WHITESPACE)
        if line and line[0] not in "#;":
            lines.append(line)
    if continuation is not None and continuation.strip(WHITESPACE):
        lines.append(continuation.strip(WHITESPACE))
    return lines


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, raw value)`` of every assignment, in order."""
    section, entries = "", []
    for line in unit_lines(text):
        if line.startswith("["):
            if not re.fullmatch(r"\[[^\[\]]+\]", line):
                raise Interpreted(f"bad section line {line!r}")
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        if not equals or not section:
            raise Interpreted(f"not an assignment in a section: {line!r}")
        entries.append((section, key.strip(WHITESPACE), value.strip(WHITESPACE)))
    return entries


def _escape(text: str, index: int) -> tuple[str, int]:
    """The character of the C escape starting after the backslash at ``index - 1``."""
    if index >= len(text):
        raise Interpreted("a backslash at the end of a value")
    char = text[index]
    if char in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[char], index + 1
    for prefix, width, base in (("x", 2, 16), ("u", 4, 16), ("U", 8, 16)):
        if char == prefix:
            digits = text[index + 1:index + 1 + width]
            if len(digits) != width:
                raise Interpreted(f"short escape \\{prefix}{digits}")
            return chr(int(digits, base)), index + 1 + width
    if char in "01234567":
        digits = text[index:index + 3]
        return chr(int(digits, 8)), index + 3
    raise Interpreted(f"unknown escape \\{char}")


def words(value: str) -> list[str]:
    """The words of a value, unquoted and unescaped (``extract_first_word`` with
    ``EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE``)."""
    found: list[str] = []
    index, word, in_word, quote = 0, "", False, ""
    while index < len(value):
        char = value[index]
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\":
                decoded, index = _escape(value, index + 1)
                word += decoded
                continue
            else:
                word += char
        elif char in WHITESPACE:
            if in_word:
                found.append(word)
            word, in_word = "", False
        elif char in "\"'":
            quote, in_word = char, True
        elif char == "\\":
            decoded, index = _escape(value, index + 1)
            word, in_word = word + decoded, True
            continue
        else:
            word, in_word = word + char, True
        index += 1
    if quote:
        raise Interpreted(f"unterminated quote in {value!r}")
    if in_word:
        found.append(word)
    return found


def specifiers(word: str) -> str:
    """``word`` with ``%%`` read as ``%``; any other specifier raises."""
    out, index = "", 0
    while index < len(word):
        if word[index] == "%":
            if word[index + 1:index + 2] != "%":
                raise Interpreted(f"specifier {word[index:index + 2]!r} in {word!r}")
            out, index = out + "%", index + 2
        else:
            out, index = out + word[index], index + 1
    return out


def environment(value: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` assignments of one ``Environment=`` line."""
    pairs = []
    for word in words(value):
        assignment = specifiers(word)
        name, equals, text = assignment.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise Interpreted(f"not an assignment: {assignment!r}")
        pairs.append((name, text))
    return pairs


def command(value: str) -> list[str]:
    """The argv an ``ExecStart=`` line runs, exactly (raises where systemd would read a flag,
    a separator, a specifier or a variable)."""
    if value[:1] in ";" or re.search(r"(^|\s);(\s|$)", value):
        raise Interpreted(f"a command separator in {value!r}")
    argv = []
    for word in words(value):
        text = specifiers(word)
        if re.search(r"(?<!\$)\$(\$\$)*(?!\$)", text):
            raise Interpreted(f"a variable in {word!r}")
        argv.append(text.replace("$$", "$"))
    if not argv or argv[0][:1] in tuple("-@:+!|"):
        raise Interpreted(f"no program, or a flag on it: {value!r}")
    return argv
