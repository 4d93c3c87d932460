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
