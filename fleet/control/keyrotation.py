"""Bus key rotation in the controller's secrets file: add a key beside the old, retire it.

Rotation without downtime, in two deploys:

1. ``fleet keys rotate NAME`` appends a new private key to ``NAME``'s ``FLEET_BUS_PRIVATE_KEY``
   (``key-old,key-new``); ``fleet deploy`` gives every gateway both public keys. ``NAME``
   still signs with its old key (the first), which every gateway also trusts.
2. ``fleet keys retire NAME`` removes the old key; ``fleet deploy`` makes ``NAME`` sign with
   the new one and drops the old public key everywhere. A message signed with the old key
   and refused by an already-redeployed gateway stays in the outbox and is sent again, signed
   with the new key, once ``NAME``'s node is deployed (deploy it first to avoid the delay).

The file is rewritten atomically (mode 0600); its leading comment block is kept, other
comments are not.

With a sealed secrets file in the registry (``fleet.secrets``), an agent's key (and the
receiver's) is rotated in the sealed file, re-sealed to its recipients; the operator's key
stays in the local plaintext file (``$FLEET_SECRETS``, which overlays the sealed one), and the
sealed file's public half of it is updated with it, so the webhook receiver's deploys give
every gateway the operator's new key too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bus.keys import (
    IDENTITIES,
    OPERATOR,
    format_keyring,
    keyring_of,
    new_private_key,
    private_keys,
)
from fleet.control.secrets import (
    BUS_KEY,
    BUS_KEYRING,
    SECRETS_ENV,
    is_sealed,
    load_secrets,
    parse_secrets,
    secrets_yaml,
)
from fleet.core.atomic import write_atomic
from fleet.core.errors import SecretsError
from fleet.core.registry import Registry

if TYPE_CHECKING:
    from fleet.control.sealed_edit import SealedFile


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    load_secrets(path)  # mode and content checks
    text = path.read_text(encoding="utf-8")
    return _leading_comments(text), secrets_yaml(text, path)


def _load_sealed(sealed: SealedFile) -> tuple[str, dict[str, Any]]:
    text = sealed.open()
    return _leading_comments(text), secrets_yaml(text, sealed.path)


def _holds(data: dict[str, Any], name: str) -> bool:
    """Whether a secrets file's data has an entry for ``name``."""
    return any(name in (data.get(section) or {}) for section in ("agents", "identities"))


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def _entry(data: dict[str, Any], name: str, create: bool) -> dict[str, Any]:
    for section in ("agents", "identities"):
        entries = data.get(section) or {}
        if name in entries:
            entries[name] = entries[name] or {}
            found: dict[str, Any] = entries[name]
            return found
    if create and name in IDENTITIES:
        identities = data.setdefault("identities", {}) or {}
        data["identities"] = identities
        identities[name] = {}
        created: dict[str, Any] = identities[name]
        return created
    known = [*(data.get("agents") or {}), *IDENTITIES]
    raise SecretsError(f"{name!r} is neither an agent in the secrets file nor an identity "
                       f"(known: {', '.join(known)})",
                       hint="Add the agent under `agents:` in the secrets file first.")


def _write(path: Path, header: str, data: dict[str, Any]) -> None:
    text = header + yaml.safe_dump(data, sort_keys=False)
    parse_secrets(yaml.safe_load(text), path)  # never write a file load_secrets refuses
    write_atomic(path, text, mode=0o600)


def secrets_file(path: str | os.PathLike[str] | None) -> Path | None:
    """The local secrets file to edit: ``path``, else ``$FLEET_SECRETS``, else none (the
    registry's sealed file may hold the keys)."""
    resolved = path or os.environ.get(SECRETS_ENV)
    return Path(resolved) if resolved else None


def _sealed(registry: Registry | None, plain: Path | None) -> SealedFile | None:
    """The registry's sealed file, when it names one (and ``plain`` is not itself sealed)."""
    if registry is None or registry.secrets is None:
        return None
    from fleet.control.sealed_edit import sealed_file

    return sealed_file(registry)


def _change(path: Path | None, registry: Registry | None, name: str, create: bool,
            change: Callable[[dict[str, Any]], str]) -> str:
    """Apply ``change`` to ``name``'s entry where its key lives: the plaintext file ``path``
    (``$FLEET_SECRETS``) for the operator and for names it holds, else the registry's sealed
    file; then the sealed file's public half of the operator's key, when that changed."""
    if path is not None and is_sealed(path):
        path = None  # a sealed $FLEET_SECRETS: the registry's sealed file is edited instead
    sealed = _sealed(registry, path)
    if sealed is None and path is None:
        raise SecretsError("no secrets file to edit",
                           hint=f"Set {SECRETS_ENV}, pass --secrets, or name a sealed file in "
                                "the registry (fleet.secrets).")
    local = path is not None and (sealed is None or name == OPERATOR
                                  or _holds(_load(path)[1], name))
    if local:
        assert path is not None
        header, data = _load(path)
        entry = _entry(data, name, create)
        result = change(entry)
        _write(path, header, data)
        if sealed is not None and name == OPERATOR and sealed.path.exists():
            _seal_operator_half(sealed, str(entry.get(BUS_KEY) or ""))
        return result
    assert sealed is not None
    if name == OPERATOR:
        raise SecretsError("the operator's bus key is kept in your local secrets file, never "
                           "in the sealed repository file",
                           hint=f"Set {SECRETS_ENV} to your local file (0600) and run this "
                                "again.")
    header, data = _load_sealed(sealed)
    entry = _entry(data, name, create)
    result = change(entry)
    sealed.seal(header + yaml.safe_dump(data, sort_keys=False))
    return result


def _seal_operator_half(sealed: SealedFile, keys: str) -> None:
    """Re-seal the sealed file with ``identities.operator`` as the public half of ``keys``."""
    header, data = _load_sealed(sealed)
    identities = data.setdefault("identities", {}) or {}
    data["identities"] = identities
    ring = format_keyring(keyring_of([(OPERATOR, keys)])) if keys else ""
    identities[OPERATOR] = {BUS_KEYRING: ring} if ring else {}
    sealed.seal(header + yaml.safe_dump(data, sort_keys=False))


def rotate(path: Path | None, name: str, registry: Registry | None = None) -> str:
    """Add a new key for ``name`` after its current ones; the new key id."""

    def add(entry: dict[str, Any]) -> str:
        new = new_private_key()
        current = _keys(entry)
        entry[BUS_KEY] = ",".join([*current, new])
        return private_keys(name, new)[0].keyid

    return _change(path, registry, name, True, add)


def retire(path: Path | None, name: str, registry: Registry | None = None) -> str:
    """Remove ``name``'s oldest key (it must have a newer one); the retired key id."""

    def drop(entry: dict[str, Any]) -> str:
        current = _keys(entry)
        if len(current) < 2:
            raise SecretsError(f"{name} has {len(current)} bus key(s); retiring needs a newer "
                               "one beside the old", hint=f"Run `fleet keys rotate {name}` and "
                                                      "deploy first.")
        entry[BUS_KEY] = ",".join(current[1:])
        return private_keys(name, current[0])[0].keyid

    return _change(path, registry, name, False, drop)


def _keys(entry: dict[str, Any]) -> list[str]:
    return [part.strip() for part in str(entry.get(BUS_KEY) or "").split(",") if part.strip()]
