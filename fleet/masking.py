"""Hide secret values in text before it is printed, logged or recorded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"


class Masker:
    """Replaces every known secret value (longest first) with ``***``."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted({value for value in values if value}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text

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
    """An env file (``NAME=value`` lines) with every value masked except ``public`` names'."""
    keep = set(public)
    lines = []
    for line in text.splitlines(keepends=True):
        name, sep, _ = line.partition("=")
        if sep and name.strip() not in keep and not line.lstrip().startswith("#"):
            lines.append(f"{name}={MASK}\n")
        else:
            lines.append(line)
    return "".join(lines)


def mask_env_pair(old: str, new: str, public: Iterable[str]) -> tuple[str, str]:
    """Old and new env file texts masked for a diff: a secret whose value changed shows as
    ``NAME=*** (changed)`` on the new side, so the diff has a line without showing a value."""
    keep = set(public)
    old_values = dict(_pairs(old))
    masked_new = []
    for line in new.splitlines(keepends=True):
        name, sep, value = line.rstrip("\n").partition("=")
        if sep and name not in keep and name in old_values and old_values[name] != value:
            masked_new.append(f"{name}={MASK} (changed)\n")
        else:
            masked_new.append(mask_env(line, keep))
    return mask_env(old, keep), "".join(masked_new)


def _pairs(text: str) -> Iterable[tuple[str, str]]:
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            yield name, value
