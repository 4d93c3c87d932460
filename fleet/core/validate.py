"""Checks of values that reach a shell, a path or a unit name on a node: matched in full
(``re.fullmatch``), refused with a typed error naming the value and the allowed form."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import unicodedata

from fleet.core.errors import FleetError

__all__ = ["AUTHORIZED_KEY_FORM", "EXEC_PREFIXES", "KEY_TYPES", "MAX_TEXT", "USER_NAME_FORM",
           "USER_NAME_RE", "ValidationError", "authorized_key_problem", "check_user_name",
           "unsafe_character"]

EXEC_PREFIXES = "-@:+!|"
"""Characters systemd reads as flags at the start of a command line's program (even a quoted
one: ``"+/bin/sh"`` would run with full privileges)."""
MAX_TEXT = 4096
"""The longest string the registry accepts anywhere (fields with a form of their own have
shorter limits)."""
_CHARACTER_NAMES = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL",
                    "\t": "a tab", "\x1b": "an escape character",
                    "\u2028": "a line separator (U+2028)",
                    "\u2029": "a paragraph separator (U+2029)", "\ufeff": "a byte order mark"}
_REFUSED_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
"""Control, format (bidirectional controls, zero-width characters: text that displays other
than it reads), surrogate, private-use, unassigned, line and paragraph separator characters."""
_INVISIBLE = frozenset(chr(code) for code in (
    0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0,
    *range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)))
"""Characters that draw nothing yet are not format characters: the combining grapheme joiner,
Hangul fillers, Khmer inherent vowels, the blank Braille pattern and the variation selectors
(which can carry a hidden byte each)."""

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
AUTHORIZED_KEY_FORM = ("TYPE BASE64 [comment] on one line, as in ~/.ssh/id_ed25519.pub: no "
                       "options such as command=, the comment of printable ASCII")
_KEY_LINE_RE = re.compile(r"(?P<type>\S+) (?P<blob>[A-Za-z0-9+/]{16,8192}={0,2})"
                          r"(?: (?P<comment>[!-~](?:[ -~]{0,254}[!-~])?))?")

# POSIX portable user names as Debian's adduser accepts them by default.
USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
USER_NAME_FORM = ("1-32 characters: lowercase letters, digits, '_' and '-', starting with a "
                  "letter or '_'")


class ValidationError(FleetError):
    """A value is not of the form it must have (a release id, a user name)."""


def check_user_name(value: str) -> str:
    """``value`` if it is a POSIX user name, else :class:`ValidationError`."""
    if not isinstance(value, str) or not USER_NAME_RE.fullmatch(value):
        raise ValidationError(f"{value!r} is not a user name ({USER_NAME_FORM})")
    return value


def unsafe_character(value: str) -> str:
    """What makes ``value`` unfit for any file written to a node (empty when nothing does):
    a control character (newline, CR, tab, NUL, ESC, ...), a format character (a bidirectional
    control such as U+202E, a zero-width character such as U+200B, U+FEFF), a character that
    draws nothing (:data:`_INVISIBLE`), a line or paragraph separator, a lone surrogate, a
    private-use, unassigned or noncharacter code point, named with its position."""
    for index, char in enumerate(value):
        code = ord(char)
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES or char in _INVISIBLE:
            name = _CHARACTER_NAMES.get(char) or (
                f"the invisible format character U+{code:04X} (a bidirectional control or "
                "zero-width character)" if category == "Cf"
                else f"the invisible character U+{code:04X}" if char in _INVISIBLE
                else f"the unassigned or private-use character U+{code:04X}"
                if category in ("Co", "Cn") else f"the control character U+{code:04X}")
            return f"{name} at position {index + 1}"
    return ""


def authorized_key_problem(line: str) -> str:
    """Why ``line`` is not an OpenSSH public key line we install (empty when it is one): a
    known key type, a base64 blob that decodes and names the same type, an optional comment
    of printable ASCII, and nothing else (no options such as ``command=``)."""
    if len(line) > MAX_TEXT:
        return f"is longer than {MAX_TEXT} characters"
    match = _KEY_LINE_RE.fullmatch(line)
    if match is None:
        first = line.split(" ", 1)[0]
        if first not in KEY_TYPES and any(f" {kind} " in f" {line} " for kind in KEY_TYPES):
            return "has options before the key type (such as command= or from=); write only " \
                   "the key"
        return f"is not an OpenSSH public key line ({AUTHORIZED_KEY_FORM})"
    kind = match.group("type")
    if kind not in KEY_TYPES:
        return f"{kind!r} is not a key type we install ({', '.join(KEY_TYPES)})"
    try:
        blob = base64.b64decode(match.group("blob"), validate=True)
    except (binascii.Error, ValueError):
        return "the key's base64 data does not decode"
    length = int.from_bytes(blob[:4], "big")
    if blob[4:4 + length] != kind.encode() or len(blob) <= 4 + length:
        return f"the key's data is not a {kind} key (copy the whole line of the .pub file)"
    return ""


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
NOT_A_HOST = "is not a hostname or IP address"


def host_problem(value: str) -> str:
    """Why ``value`` is not an IP address (no IPv6 zone id: free text after the ``%``) or a
    host name (empty when it is one). A name that the resolver reads as an address is refused:
    one whose last label is all digits (RFC 1123 2.1), or a legacy IPv4 form such as ``10``,
    ``10.1`` or ``0x7f.1`` (``inet_aton`` reads them as 0.0.0.10, 10.0.0.1, 127.0.0.1): two
    spellings of one server would pass as two hosts. So is an unspecified address (0.0.0.0,
    ::): to ssh it is this machine."""
    if not isinstance(value, str):
        return NOT_A_HOST
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if "%" in value:
            return NOT_A_HOST
        return ("is the unspecified address, which ssh takes for this machine: write the "
                "server's own address" if address.is_unspecified else "")
    if not HOSTNAME_RE.fullmatch(value):
        return NOT_A_HOST
    try:
        legacy = socket.inet_ntoa(socket.inet_aton(value))
    except OSError:
        legacy = ""
    if legacy:
        return (f"is the address {legacy} to ssh and the resolver (a legacy IPv4 form): write "
                f"{legacy}, or the server's name")
    if value.rsplit(".", 1)[-1].isdigit():
        return ("ends in an all-digit label, which resolvers take for an address: write an "
                "address as a.b.c.d, or the server's full name")
    return ""
