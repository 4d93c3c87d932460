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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from bus.keys import IDENTITIES, new_private_key, private_keys
from fleet.control.secrets import BUS_KEY, SECRETS_ENV, load_secrets, parse_secrets
from fleet.core.atomic import write_atomic
from fleet.core.errors import SecretsError


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    load_secrets(path)  # mode and content checks
    text = path.read_text(encoding="utf-8")
    return _leading_comments(text), yaml.safe_load(text) or {}


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


def secrets_file(path: str | os.PathLike[str] | None) -> Path:
    """The secrets file to edit: ``path``, else ``$FLEET_SECRETS``."""
    resolved = path or os.environ.get(SECRETS_ENV)
    if not resolved:
        raise SecretsError("no secrets file to edit", hint=f"Set {SECRETS_ENV} or pass --secrets.")
    return Path(resolved)


def rotate(path: Path, name: str) -> str:
    """Add a new key for ``name`` after its current ones; the new key id."""
    header, data = _load(path)
    entry = _entry(data, name, create=True)
    new = new_private_key()
    current = [part.strip() for part in str(entry.get(BUS_KEY) or "").split(",") if part.strip()]
    entry[BUS_KEY] = ",".join([*current, new])
    _write(path, header, data)
    return private_keys(name, new)[0].keyid


def retire(path: Path, name: str) -> str:
    """Remove ``name``'s oldest key (it must have a newer one); the retired key id."""
    header, data = _load(path)
    entry = _entry(data, name, create=False)
    current = [part.strip() for part in str(entry.get(BUS_KEY) or "").split(",") if part.strip()]
    if len(current) < 2:
        raise SecretsError(f"{name} has {len(current)} bus key(s); retiring needs a newer one "
                           "beside the old", hint=f"Run `fleet keys rotate {name}` and deploy "
                                                  "first.")
    entry[BUS_KEY] = ",".join(current[1:])
    _write(path, header, data)
    return private_keys(name, current[0])[0].keyid
