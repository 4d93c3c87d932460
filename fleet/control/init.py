"""``fleet init``: a starter registry, souls and a secrets file with fresh keys.

Every file is created with ``O_EXCL`` (and a secrets file with mode 0600 before any content):
nothing that exists is ever overwritten, and when one of the files exists nothing is written.
"""

from __future__ import annotations

import os
import secrets as random
from dataclasses import dataclass
from pathlib import Path

import yaml

from bus.keys import IDENTITIES, new_private_key
from fleet.control.secrets import BUS_KEY, SECRETS_ENV
from fleet.core.errors import FleetError
from fleet.core.registry import NAME_RE, load_registry, parse_registry

DEFAULT_AGENTS = ("orchestrator", "worker-1", "worker-2")
DEFAULT_SECRETS = "secrets.yaml"
WEBHOOK_SECRET = "FLEET_WEBHOOK_SECRET"
READ_TOKEN = "FLEET_READ_TOKEN"
KEY_BYTES = 32


class InitError(FleetError):
    """``fleet init`` cannot write its files (one exists, a bad agent name, ...)."""


@dataclass(frozen=True)
class InitResult:
    """What ``fleet init`` wrote, in order."""

    registry: Path | None
    souls: list[Path]
    secrets: Path
    agents: list[str]


def new_key() -> str:
    """A fresh random key: 32 bytes as 64 hex digits."""
    return random.token_hex(KEY_BYTES)


def registry_text(agents: list[str]) -> str:
    """A starter registry: the first agent the orchestrator, the others workers, at
    documentation addresses (203.0.113.0/24) to be replaced with the servers'."""
    lines = [
        "# Sovereign Fleet registry, written by `fleet init`: one entry per agent (\"wizard\").",
        "# Format: README.md (\"The registry\"). Check it with: fleet registry validate",
        "fleet:",
        "  name: fleet",
        "  known_hosts: known_hosts  # pinned host keys: fill it with `fleet hosts scan`",
        "  # repo_url: git@forge.example.org:ops/fleet.git  # the fleet repo (webhook receiver)",
        "  # become: sudo  # when the agents' ssh_user is not root (passwordless sudo)",
        "wizards:",
    ]
    for number, name in enumerate(agents):
        role = "orchestrator" if number == 0 else "worker"
        host = f"203.0.113.{10 * (number + 1)}"
        lines += [
            f"  {name}:",
            f"    host: {host}  # the server's address or hostname",
            f"    role: {role}",
            "    model: google/gemma-4-31b-it",
            *(["    capabilities: [webhook-receiver]"] if number == 0 else []),
            "    # ssh_user: deploy  # default root",
        ]
    return "\n".join(lines) + "\n"


def secrets_text(agents: list[str]) -> str:
    """A secrets file: the receiver's webhook secret and read token, an Ed25519 bus key per
    agent and for the operator's CLI and the webhook receiver (``identities``)."""
    data = {
        "fleet": {WEBHOOK_SECRET: new_key(), READ_TOKEN: new_key()},
        "agents": {name: {BUS_KEY: new_private_key()} for name in agents},
        "identities": {name: {BUS_KEY: new_private_key()} for name in IDENTITIES},
    }
    header = ("# Fleet secrets written by `fleet init` (mode 0600). Keep this file out of git;\n"
              f"# point the fleet at it with {SECRETS_ENV}. Add API keys under `fleet:` (all\n"
              "# agents) or under an agent, e.g. OPENROUTER_API_KEY.\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def soul_text(name: str) -> str:
    """A starter soul."""
    return f"# {name}\n\nThe soul of {name}: who it is, what it does, how it behaves.\n"


def init_fleet(registry_path: Path, secrets_path: Path, agents: list[str] | None = None,
               secrets_only: bool = False) -> InitResult:
    """Write a starter registry with souls and a secrets file, or (``secrets_only``) only a
    secrets file for the agents of the registry at ``registry_path``."""
    if secrets_only:
        names = list(load_registry(registry_path).agents)
        _refuse_existing([secrets_path])
        _create(secrets_path, secrets_text(names), 0o600)
        return InitResult(None, [], secrets_path, names)
    names = _check_names(agents or list(DEFAULT_AGENTS))
    text = registry_text(names)
    parse_registry(text, registry_path)  # the starter must be valid
    souls = [registry_path.parent / "souls" / f"{name}.md" for name in names]
    _refuse_existing([registry_path, secrets_path, *souls])
    for path in [registry_path, secrets_path, *souls]:
        path.parent.mkdir(parents=True, exist_ok=True)
    _create(secrets_path, secrets_text(names), 0o600)
    for name, soul in zip(names, souls, strict=True):
        _create(soul, soul_text(name), 0o644)
    _create(registry_path, text, 0o644)
    return InitResult(registry_path, souls, secrets_path, names)


def _check_names(names: list[str]) -> list[str]:
    for name in names:
        if not NAME_RE.fullmatch(name):
            raise InitError(f"{name!r} is not an agent name (1-31 characters of lowercase "
                            "letters, digits and '-', starting with a letter)",
                            hint="Pass names like ezra-primary bezalel allegro.")
    reserved = sorted(set(names) & set(IDENTITIES))
    if reserved:
        raise InitError(f"{reserved[0]!r} is reserved (the {reserved[0]} identity's bus key)",
                        hint="Give the agent another name.")
    if len(set(names)) != len(names):
        raise InitError(f"agent names repeat: {' '.join(names)}",
                        hint="Give each agent its own name.")
    return names


def _refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise InitError(f"{path} already exists; fleet init never overwrites a file",
                            hint="Move it away, or pass other paths (--registry, --secrets).")


def _create(path: Path, text: str, mode: int) -> None:
    """Create ``path`` (never replacing one) with ``mode`` set before the content is written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise InitError(f"{path} already exists; fleet init never overwrites a file",
                        hint="Move it away, or pass other paths (--registry, --secrets).") from None
    except OSError as exc:
        raise InitError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
        handle.write(text)
