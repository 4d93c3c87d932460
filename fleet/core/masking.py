"""Hide secret values in text before it is printed, logged or recorded.

A secret is hidden as it is and in the forms it travels in: each line of a multi-line value,
JSON-escaped, URL-encoded, base64 (standard and URL-safe, at any alignment inside a longer
encoded text), shell- and env-file-quoted. Derived forms shorter than ``MIN_SECRET_LENGTH``
are left out (they would garble unrelated output); the secrets file refuses values that short
(:mod:`fleet.control.secrets`).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from fleet.core.envfile import NEED_ESCAPE, parse_env_entries

MASK = "***"
MIN_SECRET_LENGTH = 8


def _base64_forms(data: bytes) -> set[str]:
    """The base64 encodings of ``data``: alone, and the part fixed by ``data`` alone when it
    sits at any of the three byte alignments inside a longer encoded text."""
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(encode(data).decode())
        forms.add(encode(data).decode().rstrip("="))
        for offset in (0, 1, 2):
            encoded = encode(b"\0" * offset + data).decode()
            whole = (offset + len(data)) // 3 * 4  # groups made of known bytes only
            forms.add(encoded[4 if offset else 0:whole])
    return forms


def secret_forms(value: str) -> set[str]:
    """``value`` and every form of it that output may carry (see the module docstring)."""
    pieces = {value, *value.splitlines(), *(line.strip() for line in value.splitlines())}
    forms = set()
    for piece in pieces:
        forms |= {piece, json.dumps(piece)[1:-1], json.dumps(piece, ensure_ascii=False)[1:-1],
                  quote(piece, safe=""), quote(piece), quote_plus(piece), shlex.quote(piece),
                  "".join(f"\\{c}" if c in NEED_ESCAPE else c for c in piece)}
        forms |= _base64_forms(piece.encode())
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH} | {value}


class Masker:
    """Replaces every known secret value, in every form it travels in (longest first), with
    ``***``."""

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if value:
                forms |= secret_forms(value)
        self.values = sorted(forms, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, self.values))) if forms else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub(MASK, text) if self.pattern else text

    def data(self, value: Any) -> Any:
        """Mask every string inside JSON-like data (dicts, lists, strings)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(key)): self.data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value


def mask_env(text: str, public: Iterable[str]) -> str:
    """An env file (systemd syntax) with every value masked except ``public`` names': one
    ``NAME=***`` line per secret assignment, however many lines its value spans; comments
    left out."""
    keep = set(public)
    return "".join(f"{entry.source}\n" if entry.name in keep else f"{entry.name}={MASK}\n"
                   for entry in parse_env_entries(text))


def mask_env_pair(old: str, new: str, public: Iterable[str]) -> tuple[str, str]:
    """Old and new env file texts masked for a diff: a secret whose value changed shows as
    ``NAME=*** (changed)`` on the new side, so the diff has a line without showing a value."""
    keep = set(public)
    old_values = {entry.name: entry.value for entry in parse_env_entries(old)}
    masked_new = []
    for name, value, raw, *_ in parse_env_entries(new):
        if name in keep:
            masked_new.append(f"{raw}\n")
        elif name in old_values and old_values[name] != value:
            masked_new.append(f"{name}={MASK} (changed)\n")
        else:
            masked_new.append(f"{name}={MASK}\n")
    return mask_env(old, keep), "".join(masked_new)
