"""Secrets files kept in the fleet repository, encrypted with age (``pyrage``, a binding of the
rage implementation: no cryptography of ours). A sealed file is an ordinary age file: the
``age`` command-line tool opens it with the same identity, and ``fleet secrets`` opens one the
``age`` tool wrote.

- **Identities** (who can open): an age identity file (``AGE-SECRET-KEY-1...`` lines, ``#``
  comments, as ``age-keygen`` writes it), mode 0600, named by ``$FLEET_AGE_IDENTITY`` (default
  :data:`DEFAULT_IDENTITY`). Nothing here writes an identity anywhere else.
- **Recipients** (who a file is sealed to): ``age1...`` public keys, listed in the registry
  (``fleet.secrets.recipients``).

Decrypted text stays in memory; :func:`write_sealed` replaces the file atomically (a reader, or
a crash, sees the old file or the new one, never part of one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyrage
from pyrage import x25519

from fleet.core.atomic import write_atomic
from fleet.core.errors import SecretsError
from fleet.core.files import read_regular

IDENTITY_ENV = "FLEET_AGE_IDENTITY"
DEFAULT_IDENTITY = Path("~/.config/sovereign-fleet/age-identity.txt")
AGE_HEADER = b"age-encryption.org/v1\n"
MAX_SEALED_BYTES = 1024 * 1024
"""The largest sealed file read (a secrets file is a few KiB): checked before reading."""
MAX_IDENTITY_BYTES = 64 * 1024
# Bech32 (BIP 173) data characters; matched in full
RECIPIENT_RE = re.compile(r"age1[02-9ac-hj-np-z]{58}")
IDENTITY_RE = re.compile(r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}")
RECEIVER_IDENTITY = "/etc/fleet/webhook/age-identity.txt"
"""The webhook receiver's age identity on its node (made there by its deploy, 0600, its user's;
see :mod:`deploys.webhook`)."""
RECEIVER_RECIPIENT = "/etc/fleet/webhook/age-recipient.txt"
"""The public recipient of :data:`RECEIVER_IDENTITY`, beside it (0644)."""
IDENTITY_HINT = (f"Point ${IDENTITY_ENV} at your age identity file (mode 0600), or create one "
                 "with `fleet secrets init`.")


class SealedError(SecretsError):
    """A sealed secrets file or an age key cannot be used."""


def identity_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The identity file to use: ``explicit``, else ``$FLEET_AGE_IDENTITY``, else
    :data:`DEFAULT_IDENTITY`."""
    chosen = explicit or os.environ.get(IDENTITY_ENV) or DEFAULT_IDENTITY
    return Path(chosen).expanduser()


def load_identities(path: Path) -> list[x25519.Identity]:
    """The age identities in ``path`` (mode 0600 or stricter; ``#`` lines are comments),
    read as :func:`fleet.core.files.read_regular` reads every file a person names."""
    text = read_regular(path, "age identity file", MAX_IDENTITY_BYTES, hint=IDENTITY_HINT,
                        private=True, error=SealedError).decode("utf-8", errors="replace")
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not IDENTITY_RE.fullmatch(line):
            raise SealedError(f"{path}:{number}: not an age X25519 identity "
                              "(AGE-SECRET-KEY-1 and 58 Bech32 characters)", hint=IDENTITY_HINT)
        identities.append(x25519.Identity.from_str(line))
    if not identities:
        raise SealedError(f"{path}: holds no age identity", hint=IDENTITY_HINT)
    return identities


def recipients(values: Iterable[str], where: str) -> list[x25519.Recipient]:
    """``values`` as age recipients; ``where`` names their place in errors."""
    found = []
    for value in values:
        if not isinstance(value, str) or not RECIPIENT_RE.fullmatch(value):
            raise SealedError(f"{where}: {str(value)[:80]!r} is not an age recipient (age1 and "
                              "58 Bech32 characters)",
                              hint="`age-keygen -y IDENTITY_FILE` prints an identity's "
                                   "recipient.")
        found.append(x25519.Recipient.from_str(value))
    return found


def recipient_of(identity: x25519.Identity) -> str:
    """The public recipient of ``identity`` (what others seal to)."""
    return str(identity.to_public())


def open_sealed(path: Path, identities: Sequence[x25519.Identity],
                identity_file: Path | None = None) -> str:
    """The text of sealed file ``path``, decrypted in memory with ``identities``."""
    data = read_regular(path, "sealed secrets file", MAX_SEALED_BYTES,
                        hint="Create it with `fleet secrets encrypt` or `fleet secrets edit`.",
                        error=SealedError)
    if not data.startswith(AGE_HEADER):
        raise SealedError(f"{path}: not an age file (no age-encryption.org/v1 header)",
                          hint="Seal a plaintext secrets file with `fleet secrets encrypt`.")
    who = f"the identity in {identity_file}" if identity_file else "the given identity"
    try:
        plain = pyrage.decrypt(data, list(identities))
    except pyrage.DecryptError as exc:
        if "No matching keys" in str(exc):
            raise SealedError(f"{path}: not sealed to {who}",
                              hint="Ask someone who can open it to add your recipient: "
                                   "`fleet secrets recipients add age1...`.") from None
        raise SealedError(f"{path}: damaged or tampered with (age: {exc})",
                          hint="Restore it from git (`git checkout -- FILE`).") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise SealedError(f"{path}: the sealed text is not UTF-8") from None


SEALED_TO = "# sealed to: "
SEALED_TO_RE = re.compile(rf"{SEALED_TO}((?:{RECIPIENT_RE.pattern})(?:, {RECIPIENT_RE.pattern})*)"
                          r"[^\n]*\n")
"""The first line of every text ``fleet secrets`` seals: whom it sealed it to (a YAML comment;
only those who can open the file read it)."""


def recorded_recipients(text: str) -> tuple[str, ...] | None:
    """The recipients ``text`` was last sealed to, as its first line records them (None when it
    records none: a file the ``age`` tool or an older ``fleet`` wrote)."""
    found = SEALED_TO_RE.match(text)
    return tuple(found[1].split(", ")) if found else None


def with_recipients(text: str, to: Sequence[str]) -> str:
    """``text`` with its first line recording ``to`` (:data:`SEALED_TO_RE`), an old such line
    replaced."""
    found = SEALED_TO_RE.match(text)
    body = text[found.end():] if found else text
    return f"{SEALED_TO}{', '.join(to)}  (fleet secrets rewrites this line)\n{body}"


def seal(text: str, to: Sequence[x25519.Recipient], where: str) -> bytes:
    """``text`` encrypted to every recipient in ``to`` (at least one)."""
    if not to:
        raise SealedError(f"{where}: no recipients to seal the secrets to",
                          hint="List them in registry.yaml: fleet.secrets.recipients.")
    return bytes(pyrage.encrypt(text.encode("utf-8"), list(to)))


def write_sealed(path: Path, text: str, to: Sequence[x25519.Recipient]) -> None:
    """Replace ``path`` with ``text`` sealed to ``to``, atomically: the old file or the new
    one, never part of one, never plaintext."""
    sealed = seal(text, to, str(path))
    try:
        write_atomic(path, sealed, mode=0o644)
    except OSError as exc:
        raise SealedError(f"{path}: cannot write the sealed file ({exc.strerror or exc})",
                          hint="It must be a regular file (or absent) in an existing folder "
                               "you can write.") from None
