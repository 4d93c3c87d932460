"""The controller-side secrets file (``$FLEET_SECRETS``), kept outside git.

Format (YAML, mode 0600 or stricter)::

    fleet:                      # given to every agent
      OPENROUTER_API_KEY: "..."
      FLEET_WEBHOOK_SECRET: "..."   # receiver-only (below)
    agents:
      ezra-primary:
        FLEET_BUS_KEY: "..."    # this agent's bus signing key
        FLEET_DEPLOY_SSH_KEY: |  # receiver-only: private key its deploys reach the fleet with
          -----BEGIN OPENSSH PRIVATE KEY-----
          ...

Names are environment variable names; values are strings. The receiver-only names
(``RECEIVER_ONLY``) go to the webhook receiver on a ``webhook-receiver`` agent's node, never
into an agent's environment.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fleet.errors import SecretsError
from fleet.masking import MIN_SECRET_LENGTH

SECRETS_ENV = "FLEET_SECRETS"
BUS_KEY = "FLEET_BUS_KEY"
BUS_KEYRING = "FLEET_BUS_KEYS"
ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")  # matched in full
RECEIVER_SECRETS = ("FLEET_WEBHOOK_SECRET", "FLEET_GITLAB_TOKEN", "FLEET_READ_TOKEN")
DEPLOY_SSH_KEY = "FLEET_DEPLOY_SSH_KEY"
RECEIVER_ONLY = (*RECEIVER_SECRETS, DEPLOY_SSH_KEY)


@dataclass(frozen=True)
class Secrets:
    """Secret environment values, fleet-wide and per agent."""

    path: Path | None = None
    fleet: dict[str, str] = field(default_factory=dict)
    agents: dict[str, dict[str, str]] = field(default_factory=dict)

    def bus_keys(self) -> dict[str, str]:
        """Every agent's bus signing key, by agent name."""
        return {name: env[BUS_KEY] for name, env in self.agents.items() if BUS_KEY in env}

    def for_agent(self, name: str) -> dict[str, str]:
        """The environment one agent's service gets: fleet values, its own, and the bus keyring
        (receiver-only values left out)."""
        env = {key: value for key, value in {**self.fleet, **self.agents.get(name, {})}.items()
               if key not in RECEIVER_ONLY}
        keys = self.bus_keys()
        if keys:
            env[BUS_KEYRING] = format_keyring(keys)
        return env

    def for_receiver(self, name: str) -> dict[str, str]:
        """The receiver-only values set for agent ``name`` (its own over the fleet's)."""
        env = {**self.fleet, **self.agents.get(name, {})}
        return {key: env[key] for key in RECEIVER_ONLY if env.get(key)}

    def values(self) -> set[str]:
        """Every secret value (for masking output)."""
        found = set(self.fleet.values())
        for env in self.agents.values():
            found.update(env.values())
        keys = self.bus_keys()
        if keys:
            found.add(format_keyring(keys))
        return {value for value in found if value}


def format_keyring(keys: dict[str, str]) -> str:
    """``name=key,name=key``: the form of ``FLEET_BUS_KEYS`` in an agent's environment."""
    return ",".join(f"{name}={key}" for name, key in sorted(keys.items()))


def parse_keyring(text: str) -> dict[str, str]:
    """Inverse of :func:`format_keyring`; empty text gives an empty keyring."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, key = item.partition("=")
        if not sep or not name or not key:
            raise SecretsError(f"{BUS_KEYRING}: {item!r} is not NAME=KEY")
        keys[name] = key
    return keys


def secrets_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The secrets file to use: ``explicit``, else ``$FLEET_SECRETS``, else none."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(SECRETS_ENV)
    return Path(from_env) if from_env else None


def load_secrets(path: str | os.PathLike[str] | None = None) -> Secrets:
    """Load and check the secrets file; no file configured gives empty secrets."""
    resolved = secrets_path(path)
    if resolved is None:
        return Secrets()
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise SecretsError(f"{resolved}: secrets file not found",
                           hint=f"Create it (mode 0600) or unset {SECRETS_ENV}.") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(
            f"{resolved}: secrets file is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o})",
            hint=f"Run: chmod 600 {resolved}",
        )
    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SecretsError(f"{resolved}:{_yaml_error(exc)}",
                           hint="Fix the YAML at that line and column.") from None
    if not isinstance(data, dict) or set(data) - {"fleet", "agents"}:
        raise SecretsError(f"{resolved}: top level must be a mapping with `fleet:` and `agents:`")
    fleet = _env_mapping(data.get("fleet") or {}, f"{resolved}: fleet")
    agents_data = data.get("agents") or {}
    if not isinstance(agents_data, dict):
        raise SecretsError(f"{resolved}: agents must be a mapping of agent name to variables")
    agents = {str(name): _env_mapping(env or {}, f"{resolved}: agents.{name}")
              for name, env in agents_data.items()}
    return Secrets(path=resolved, fleet=fleet, agents=agents)


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
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", "(text not shown)", problem)
    return f"{where} YAML syntax error: {problem}"
