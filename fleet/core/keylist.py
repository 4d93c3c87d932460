"""``NAME=VALUE,...`` lists of keys: the text form the secrets file gives keyrings in (checked
keyrings of public keys: :func:`bus.keys.parse_keyring`)."""

from __future__ import annotations

from fleet.core.errors import SecretsError


def format_keyring(keys: dict[str, str]) -> str:
    """``name=value,...`` sorted by name: the inverse of :func:`parse_keyring`."""
    return ",".join(f"{name}={key}" for name, key in sorted(keys.items()))


def parse_keyring(text: str) -> dict[str, str]:
    """``name=value,...`` as a mapping. Empty text gives an empty mapping."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, key = item.partition("=")
        if not sep or not name or not key:
            raise SecretsError(f"{item!r} is not NAME=KEY")
        keys[name] = key
    return keys
