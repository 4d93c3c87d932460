"""The controller-side secrets file (``$FLEET_SECRETS``), kept outside git.

Format (YAML, mode 0600 or stricter)::

    fleet:                      # given to every agent
      OPENROUTER_API_KEY: "..."
      FLEET_WEBHOOK_SECRET: "..."   # receiver-only (below)
    agents:
      ezra-primary:
        FLEET_BUS_PRIVATE_KEY: "..."  # its Ed25519 bus key(s), base64, oldest first (bus.keys)
        FLEET_DEPLOY_SSH_KEY: |  # receiver-only: private key its deploys reach the fleet with
          -----BEGIN OPENSSH PRIVATE KEY-----
          ...
    identities:                 # bus keys of who is not an agent
      operator:                 # the operator's `fleet bus` CLI
        FLEET_BUS_PRIVATE_KEY: "..."
      receiver:                 # the webhook receiver's drift alerts
        FLEET_BUS_PRIVATE_KEY: "..."

An identity may hold only its public keys instead (``FLEET_BUS_PUBLIC_KEYS: "operator:ID=KEY"``,
the keyring form): gateways trust it, nothing here can sign as it. The webhook receiver's copy
(:meth:`Secrets.receiver_copy`) holds the operator that way.

Names are environment variable names; values are strings. The receiver-only names
(``RECEIVER_ONLY``) go to the webhook receiver on a ``webhook-receiver`` agent's node, never
into an agent's environment. An agent's environment gets its own private bus key and the
public keys of every agent and identity (``FLEET_BUS_PUBLIC_KEYS``), never another private
key.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bus.keys import (
    IDENTITIES,
    OPERATOR,
    PRIVATE_KEY_ENV,
    PUBLIC_KEYS_ENV,
    RECEIVER,
    BadKey,
    SigningKey,
    format_keyring,
    keyring_of,
    parse_keyring,
    private_keys,
    signing_key,
    split_keyring,
)
from fleet.core.errors import SecretsError
from fleet.core.files import read_regular
from fleet.core.masking import MIN_SECRET_LENGTH
from fleet.core.registry import Registry

SECRETS_ENV = "FLEET_SECRETS"
BUS_KEY = PRIVATE_KEY_ENV  # an agent's or identity's private bus key(s)
BUS_KEYRING = PUBLIC_KEYS_ENV  # the public keyring every agent gets (not secret)
OLD_BUS_KEY = "FLEET_BUS_KEY"  # the shared HMAC key of before: refused with a hint
ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")  # matched in full
MAX_SECRETS_BYTES = 1024 * 1024
"""The largest secrets file read (one is a few KiB)."""
RECEIVER_SECRETS = ("FLEET_WEBHOOK_SECRET", "FLEET_GITLAB_TOKEN", "FLEET_READ_TOKEN")
DEPLOY_SSH_KEY = "FLEET_DEPLOY_SSH_KEY"
RECEIVER_ONLY = (*RECEIVER_SECRETS, DEPLOY_SSH_KEY)


@dataclass(frozen=True)
class Secrets:
    """Secret environment values, fleet-wide and per agent."""

    path: Path | None = None
    fleet: dict[str, str] = field(default_factory=dict)
    agents: dict[str, dict[str, str]] = field(default_factory=dict)
    identities: dict[str, dict[str, str]] = field(default_factory=dict)
    local: Path | None = None
    """The plaintext file overlaid on a sealed one (:func:`overlay`), if any."""

    def private_keys(self) -> dict[str, str]:
        """The private bus key text of every agent and identity that has one, by name."""
        return {name: env[BUS_KEY] for name, env in {**self.identities, **self.agents}.items()
                if env.get(BUS_KEY)}

    def operator_key(self) -> SigningKey | None:
        """The key the operator's CLI signs with (``identities.operator``), if any."""
        text = self.identities.get(OPERATOR, {}).get(BUS_KEY)
        return signing_key(OPERATOR, text) if text else None

    def public_keyring(self) -> dict[str, str]:
        """``{keyid: public key}`` of every private key here, and of identities given only
        by their public keys (:data:`BUS_KEYRING`): what every gateway trusts."""
        ring = keyring_of(self.private_keys().items())
        for env in self.identities.values():
            if BUS_KEYRING in env and BUS_KEY not in env:
                ring.update(split_keyring(env[BUS_KEYRING]))
        return ring

    def receiver_copy(self) -> str:
        """The secrets file the webhook receiver's deploys use (YAML): everything they need
        to write every agent's environment, with the operator's bus key as its public half
        only (``FLEET_BUS_PUBLIC_KEYS``): every gateway goes on trusting the operator, and
        the receiver's node cannot sign as the operator."""
        identities: dict[str, dict[str, str]] = {}
        for name, env in self.identities.items():
            env = dict(env)
            if name == OPERATOR and env.get(BUS_KEY):
                env[BUS_KEYRING] = format_keyring(keyring_of([(name, env.pop(BUS_KEY))]))
            identities[name] = env
        data = {"fleet": self.fleet, "agents": self.agents, "identities": identities}
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    def for_agent(self, name: str) -> dict[str, str]:
        """The environment one agent's service gets: fleet values, its own (its private bus
        key among them) and the public keyring (receiver-only values left out)."""
        env = {key: value for key, value in {**self.fleet, **self.agents.get(name, {})}.items()
               if key not in RECEIVER_ONLY}
        keys = self.public_keyring()
        if keys:
            env[BUS_KEYRING] = format_keyring(keys)
        return env

    def for_receiver(self, name: str) -> dict[str, str]:
        """The receiver-only values set for agent ``name`` (its own over the fleet's), and
        the receiver identity's own private bus key (its drift alerts)."""
        env = {**self.fleet, **self.agents.get(name, {})}
        found = {key: env[key] for key in RECEIVER_ONLY if env.get(key)}
        own = self.identities.get(RECEIVER, {}).get(BUS_KEY)
        if own:
            found[BUS_KEY] = own
        return found

    def values(self) -> set[str]:
        """Every secret value (for masking output); public keys are not secret."""
        found = set(self.fleet.values())
        for env in [*self.agents.values(), *self.identities.values()]:
            found.update(value for name, value in env.items() if name != BUS_KEYRING)
            found.update(part.strip() for part in env.get(BUS_KEY, "").split(","))
        return {value for value in found if value}


def secrets_path(explicit: str | os.PathLike[str] | None = None,
                 registry: Registry | None = None) -> Path | None:
    """The secrets file to use: ``explicit``, else ``$FLEET_SECRETS``, else the registry's
    sealed file (``fleet.secrets.file``), else none."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(SECRETS_ENV)
    if from_env:
        return Path(from_env)
    return sealed_path(registry)


def sealed_path(registry: Registry | None) -> Path | None:
    """The registry's sealed secrets file (``fleet.secrets.file``), if it names one
    (:meth:`Registry.sealed_path`: checked again)."""
    return None if registry is None else registry.sealed_path()


def is_sealed(path: Path) -> bool:
    """Whether ``path`` names a sealed (age-encrypted) secrets file: ``*.age``."""
    return path.suffix == ".age"


def load_secrets(path: str | os.PathLike[str] | None = None,
                 registry: Registry | None = None,
                 identity: str | os.PathLike[str] | None = None) -> Secrets:
    """Load and check the secrets (:func:`secrets_path`); a sealed file (``*.age``) is
    decrypted in memory with the age identity file ``identity`` (default
    ``$FLEET_AGE_IDENTITY``). When the registry names a sealed file and ``$FLEET_SECRETS``
    (or ``path``) a plaintext one, the plaintext file overlays the sealed one: it holds what
    never goes to the repository, such as the operator's private bus key (:func:`overlay`).
    No file configured gives empty secrets."""
    resolved = secrets_path(path, registry)
    if resolved is None:
        return Secrets()
    if is_sealed(resolved):
        return parse_secrets_text(read_sealed(resolved, identity), resolved)
    local = load_plain(resolved)
    sealed = sealed_path(registry)
    if sealed is None:
        return local
    return overlay(parse_secrets_text(read_sealed(sealed, identity), sealed), local)


def load_plain(resolved: Path) -> Secrets:
    """A plaintext secrets file: a regular file of mode 0600 or stricter, then its content
    checked."""
    data = read_regular(resolved, "secrets file", MAX_SECRETS_BYTES, private=True,
                        hint=f"Create it (mode 0600) or unset {SECRETS_ENV}.",
                        error=SecretsError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretsError(f"{resolved}: the secrets file is not UTF-8 text") from None
    return parse_secrets_text(text, resolved)


def overlay(base: Secrets, local: Secrets) -> Secrets:
    """``base`` (the sealed repository file) with ``local``'s values over it, name by name;
    an identity whose private key is local keeps no other public key than that key's."""
    identities = {name: dict(env) for name, env in base.identities.items()}
    for name, env in local.identities.items():
        merged = {**identities.get(name, {}), **env}
        if BUS_KEY in env:
            merged.pop(BUS_KEYRING, None)
        identities[name] = merged
    agents = {name: dict(env) for name, env in base.agents.items()}
    for name, env in local.agents.items():
        agents[name] = {**agents.get(name, {}), **env}
    return Secrets(path=base.path, fleet={**base.fleet, **local.fleet}, agents=agents,
                   identities=identities, local=local.path)


def operator_key_problem(base: Secrets, local: Secrets) -> str | None:
    """Why the local operator key and the sealed file's public half of it disagree (the
    receiver's deploys would give every gateway the sealed one): None when they agree."""
    private = local.identities.get(OPERATOR, {}).get(BUS_KEY)
    public = base.identities.get(OPERATOR, {}).get(BUS_KEYRING)
    if not private or not public:
        return None
    mine = keyring_of([(OPERATOR, private)])
    if mine != split_keyring(public):
        return (f"identities.{OPERATOR}.{BUS_KEYRING} in {base.path} is not the public half "
                f"of the operator key in {local.path}")
    return None


def read_sealed(path: Path, identity: str | os.PathLike[str] | None = None) -> str:
    """The plaintext of sealed secrets file ``path``, opened in memory with the identity file
    ``identity`` (default ``$FLEET_AGE_IDENTITY``)."""
    from fleet.control.sealed import identity_path, load_identities, open_sealed

    chosen = identity_path(identity)
    return open_sealed(path, load_identities(chosen), chosen)


def parse_secrets_text(text: str, resolved: Path) -> Secrets:
    """Check the text of a secrets file (YAML; ``resolved`` names it in errors)."""
    return parse_secrets(secrets_yaml(text, resolved), resolved)


class RepeatedKey(yaml.constructor.ConstructorError):
    """A mapping of a secrets file names a key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in a mapping (it would keep the last one
    silently: a value edited in one place and left in another)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):  # unhashable: the loader refuses it itself
                if key in first:
                    raise RepeatedKey(None, None, "repeated key (first defined on line "
                                      f"{first[key]}); keep one", key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def secrets_yaml(text: str, resolved: Path) -> Any:
    """The YAML data of a secrets file's ``text`` (``resolved`` names it in errors), a key
    repeated in a mapping refused; no error quotes the text."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SecretsError(f"{resolved}:{_yaml_error(exc)}",
                           hint="Fix the YAML at that line and column.") from None


def parse_secrets(data: object, resolved: Path) -> Secrets:
    """Check the loaded YAML of a secrets file (``resolved`` names it in errors)."""
    if not isinstance(data, dict) or set(data) - {"fleet", "agents", "identities"}:
        raise SecretsError(f"{resolved}: top level must be a mapping with `fleet:`, `agents:` "
                           "and `identities:`")
    fleet = _env_mapping(data.get("fleet") or {}, f"{resolved}: fleet")
    sections: dict[str, dict[str, dict[str, str]]] = {}
    for section in ("agents", "identities"):
        found = data.get(section) or {}
        if not isinstance(found, dict):
            raise SecretsError(f"{resolved}: {section} must be a mapping of name to variables")
        sections[section] = {str(name): _env_mapping(env or {}, f"{resolved}: {section}.{name}")
                             for name, env in found.items()}
    unknown = sorted(set(sections["identities"]) - set(IDENTITIES))
    if unknown:
        raise SecretsError(f"{resolved}: identities.{unknown[0]}: not an identity "
                           f"({', '.join(IDENTITIES)})")
    clash = sorted(set(sections["identities"]) & set(sections["agents"]))
    if clash:
        raise SecretsError(f"{resolved}: agents.{clash[0]}: the name is reserved for the "
                           f"{clash[0]} identity's bus key", hint="Rename the agent.")
    for section, entries in sections.items():
        for name, env in entries.items():
            where = f"{resolved}: {section}.{name}"
            if OLD_BUS_KEY in env:
                raise SecretsError(
                    f"{where}.{OLD_BUS_KEY}: shared HMAC bus keys were replaced by per-agent "
                    f"Ed25519 keys ({BUS_KEY})",
                    hint=f"Delete the {OLD_BUS_KEY} lines, then run `fleet keys rotate NAME` "
                         "for each agent and `fleet keys rotate operator`.")
            if BUS_KEY in env:
                try:
                    private_keys(name, env[BUS_KEY])
                except BadKey as exc:
                    raise SecretsError(f"{where}.{BUS_KEY}: {exc}", hint=exc.hint) from None
            elif BUS_KEYRING in env and section == "identities":  # public half only
                try:
                    keys = parse_keyring(env[BUS_KEYRING])
                except BadKey as exc:
                    raise SecretsError(f"{where}.{BUS_KEYRING}: {exc}", hint=exc.hint) from None
                if any(key.name != name for key in keys.values()):
                    raise SecretsError(f"{where}.{BUS_KEYRING}: every key id must name "
                                       f"{name!r}")
    return Secrets(path=resolved, fleet=fleet, agents=sections["agents"],
                   identities=sections["identities"])


def _env_mapping(data: object, where: str) -> dict[str, str]:
    if not isinstance(data, dict):
        raise SecretsError(f"{where}: must be a mapping of VARIABLE: value")
    env: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise SecretsError(f"{where}: {name!r} is not an environment variable name "
                               "(A-Z, 0-9, _; matched in full)")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SecretsError(f"{where}.{name}: value must be a string")
        if len(str(value)) < MIN_SECRET_LENGTH:
            raise SecretsError(
                f"{where}.{name}: the value is shorter than {MIN_SECRET_LENGTH} characters "
                "(too short to mask in output without garbling it)",
                hint="Use a longer, random value, e.g. from `openssl rand -hex 32`.")
        env[name] = str(value)
    return env


def _yaml_error(exc: yaml.YAMLError) -> str:
    """``LINE:COLUMN: YAML syntax error: PROBLEM`` without the file's text: PyYAML's message
    quotes the offending line (a secret, perhaps) and its problem may quote a token of it."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    if isinstance(exc, RepeatedKey):
        return f"{where} {problem}"
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", "(text not shown)", problem)
    return f"{where} YAML syntax error: {problem}"
