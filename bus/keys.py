"""Bus identities: Ed25519 key pairs, their key ids and the public keyring.

Every agent, the operator's CLI (:data:`OPERATOR`) and the webhook receiver
(:data:`RECEIVER`) sign with their own Ed25519 private key; a gateway trusts the public keys
in its keyring. Text forms (environment values, the secrets file):

- a private key: the 32-byte Ed25519 seed in standard base64 (44 characters). An identity
  may hold several, comma-separated, oldest first (during a key rotation); it signs with the
  first. Environment: :data:`PRIVATE_KEY_ENV`.
- a key id: ``<name>:<fingerprint>``, the fingerprint the first 16 hex digits of
  SHA-256 over the raw 32-byte public key. The name says whose key it is; the fingerprint
  tells an identity's keys apart, so a rotated key gets a new key id.
- the public keyring: ``<keyid>=<base64 public key>,...``. Environment:
  :data:`PUBLIC_KEYS_ENV` (not a secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bus.errors import BusError

PRIVATE_KEY_ENV = "FLEET_BUS_PRIVATE_KEY"
PUBLIC_KEYS_ENV = "FLEET_BUS_PUBLIC_KEYS"
OPERATOR = "operator"  # the operator's CLI: acts for any agent on that agent's own gateway
RECEIVER = "receiver"  # the webhook receiver: may only queue alerts (POST /outbox)
IDENTITIES = (OPERATOR, RECEIVER)
KEYID_RE = re.compile(r"([a-z][a-z0-9-]{0,30}):([0-9a-f]{16})")
KEY_TEXT_RE = re.compile(r"[A-Za-z0-9+/]{43}=")


class BadKey(BusError):
    """A key, key id or keyring in text form is malformed."""


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key: its key id, whose it is, the key."""

    keyid: str
    name: str
    key: Ed25519PublicKey


@dataclass(frozen=True)
class SigningKey:
    """A private key an identity signs with, and its key id."""

    keyid: str
    name: str
    key: Ed25519PrivateKey

    def public_text(self) -> str:
        """The public key in base64."""
        return encode_public(self.key.public_key())


def new_private_key() -> str:
    """A fresh Ed25519 private key in text form."""
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                                     NoEncryption())
    return base64.b64encode(raw).decode()


def encode_public(key: Ed25519PublicKey) -> str:
    """A public key as base64 of its 32 raw bytes."""
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def fingerprint(public_text: str) -> str:
    """The first 16 hex digits of SHA-256 over the raw public key."""
    return hashlib.sha256(_decode(public_text, "public key")).hexdigest()[:16]


def keyid(name: str, public_text: str) -> str:
    """``<name>:<fingerprint>``."""
    return f"{name}:{fingerprint(public_text)}"


def _decode(text: str, what: str) -> bytes:
    if not KEY_TEXT_RE.fullmatch(text):
        raise BadKey(f"{what}: not 32 bytes in base64 (44 characters ending in '=')",
                     hint="Generate keys with `fleet init` or `fleet keys rotate`.")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise BadKey(f"{what}: not valid base64") from None


def private_keys(name: str, text: str) -> list[SigningKey]:
    """The signing keys of ``name`` from ``text`` (one or more, comma-separated)."""
    found = []
    for part in filter(None, (item.strip() for item in text.split(","))):
        key = Ed25519PrivateKey.from_private_bytes(_decode(part, f"{name}'s private key"))
        found.append(SigningKey(keyid(name, encode_public(key.public_key())), name, key))
    if not found:
        raise BadKey(f"{name}: no private key in {PRIVATE_KEY_ENV}")
    return found


def signing_key(name: str, text: str) -> SigningKey:
    """The key ``name`` signs with: the first (oldest) of ``text``."""
    return private_keys(name, text)[0]


def public_keys(name: str, text: str) -> dict[str, str]:
    """``{keyid: public key text}`` for each private key of ``name`` in ``text``."""
    return {key.keyid: key.public_text() for key in private_keys(name, text)}


def format_keyring(keys: Mapping[str, str]) -> str:
    """``keyid=public,...`` sorted by key id: :data:`PUBLIC_KEYS_ENV`'s form."""
    return ",".join(f"{ident}={public}" for ident, public in sorted(keys.items()))


def split_keyring(text: str) -> dict[str, str]:
    """A keyring text as ``{key id: public key text}``, unchecked (:func:`parse_keyring`
    checks); :class:`BadKey` for an item that is no ``ID=KEY``. Empty text: ``{}``."""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ident, sep, public = item.partition("=")
        if not sep or not ident or not public:
            raise BadKey(f"{PUBLIC_KEYS_ENV}: {item[:40]!r} is not ID=KEY")
        found[ident] = public
    return found


def parse_keyring(text: str) -> dict[str, PublicKey]:
    """The trusted keys of a keyring text by key id; each key id must match its key."""
    keys: dict[str, PublicKey] = {}
    for ident, public in split_keyring(text).items():
        match = KEYID_RE.fullmatch(ident)
        if match is None:
            raise BadKey(f"{PUBLIC_KEYS_ENV}: {ident!r} is not a key id (<name>:<16 hex "
                         "digits>)")
        if fingerprint(public) != match.group(2):
            raise BadKey(f"{PUBLIC_KEYS_ENV}: key id {ident!r} does not match its public key "
                         "(the fingerprint is SHA-256 of the key)")
        keys[ident] = PublicKey(ident, match.group(1),
                                Ed25519PublicKey.from_public_bytes(_decode(public, ident)))
    return keys


def keyring_of(identities: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The public keyring ``{keyid: public}`` of ``(name, private key text)`` pairs."""
    ring: dict[str, str] = {}
    for name, text in identities:
        ring.update(public_keys(name, text))
    return ring
