"""Settings of the webhook receiver, read from the environment and an optional config file.

The config file (``$FLEET_WEBHOOK_CONFIG`` or ``fleet webhook serve --config``) is read as
systemd reads an ``EnvironmentFile=`` (:mod:`fleet.core.envfile`: the deploy writes it so, and the
unit loads it so); variables set in the environment win.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.control.secrets import RECEIVER_SECRETS
from fleet.core.envfile import scan_env
from fleet.core.errors import WebhookError
from fleet.webhook.checkout import check_repo_url

CONFIG_ENV = "FLEET_WEBHOOK_CONFIG"
DEFAULT_TAG = "PROD"
DEFAULT_STATE_DIR = "/var/lib/sovereign-fleet/webhook"
HEALTH_MODES = ("fleet", "http", "off")
MIN_SECRET_LENGTH = 16
CONFIG_HINT = ("The config file has systemd's EnvironmentFile= syntax: KEY=value lines, a value "
               "in \"...\" or '...' may span lines, # and ; start comments.")
SECRET_HINT = "Generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"


@dataclass(frozen=True)
class Settings:
    """Everything the receiver, the runner and the read API need."""

    webhook_secret: str | None
    gitlab_token: str | None
    read_token: str
    repo_url: str
    state_dir: Path
    deploy_tag: str = DEFAULT_TAG
    deploy_command: tuple[str, ...] = ()
    deploy_timeout: float = 3600.0
    health_timeout: float = 5.0
    health_check: str = "fleet"
    drift_interval: float = 900.0
    drift_heal: bool = False
    env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def command(self) -> tuple[str, ...]:
        """The deploy command: ``python -m fleet deploy`` (the rollout ``fleet deploy`` runs),
        unless ``FLEET_DEPLOY_COMMAND`` names a stand-in (tests) that writes a run record the
        same way."""
        return self.deploy_command or (sys.executable, "-m", "fleet", "deploy")

    @property
    def db_path(self) -> Path:
        """The SQLite file holding deliveries and runs."""
        return self.state_dir / "webhook.sqlite3"

    def deploy_env(self) -> dict[str, str]:
        """The deploy's environment: the receiver's settings (``FLEET_REGISTRY``,
        ``FLEET_SECRETS``, ...) without the receiver's own secrets."""
        return {key: value for key, value in self.env.items() if key not in RECEIVER_SECRETS}


AFTER_QUOTE_RE = re.compile(r"""[^=]*=[ \t]*(["'])(?:\\.|(?!\1)[^\\])*\1[ \t]*[^\s]""",
                            re.DOTALL)
"""An assignment whose quoted value is followed by more text (``KEY="v" # note``), matched
from the assignment's start: a quoted value holding ``=''`` is not an assignment of its own."""


def read_config_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables systemd's ``EnvironmentFile=`` would set from ``path``
    (:func:`fleet.core.envfile.scan_env`); an entry systemd would skip or misread is refused,
    naming its line (never a value)."""
    config_path = Path(path)
    try:
        # as systemd reads it: a carriage return stays one (no newline translation), and an
        # editor's byte order mark is no name
        with config_path.open(encoding="utf-8-sig", newline="") as stream:
            text = stream.read()
    except OSError as exc:
        raise WebhookError(f"{config_path}: cannot read config file: {exc.strerror}",
                           hint=f"Pass an existing file or unset {CONFIG_ENV}.") from None
    values: dict[str, str] = {}
    for entry in scan_env(text):
        if entry.problem:
            raise WebhookError(f"{config_path}:{entry.line}: {entry.name!r} {entry.problem}",
                               hint=CONFIG_HINT)
        if AFTER_QUOTE_RE.match(entry.source):  # systemd would glue it to the value
            raise WebhookError(
                f"{config_path}:{entry.line}: {entry.name!r} has text after its closing quote, "
                "which systemd adds to the value", hint="Put a comment on a line of its own.")
        values[entry.name] = entry.value
    return values


def load_settings(env: Mapping[str, str] | None = None,
                  config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from ``config_file`` (or ``$FLEET_WEBHOOK_CONFIG``) overlaid by ``env``."""
    environ = dict(os.environ if env is None else env)
    file_path = config_file or environ.get(CONFIG_ENV)
    values = {**(read_config_file(file_path) if file_path else {}), **environ}
    webhook_secret = _secret(values, "FLEET_WEBHOOK_SECRET")
    gitlab_token = _secret(values, "FLEET_GITLAB_TOKEN")
    if not webhook_secret and not gitlab_token:
        raise WebhookError(
            "FLEET_WEBHOOK_SECRET is not set (nor FLEET_GITLAB_TOKEN): "
            "the receiver cannot check who sent a push",
            hint=f"Set FLEET_WEBHOOK_SECRET (Gitea, GitHub) or FLEET_GITLAB_TOKEN. {SECRET_HINT}")
    try:
        command = shlex.split(values.get("FLEET_DEPLOY_COMMAND") or "")
    except ValueError as exc:
        raise WebhookError(f"FLEET_DEPLOY_COMMAND: {values['FLEET_DEPLOY_COMMAND']!r} cannot be "
                           f"split into arguments ({exc})",
                           hint="Quote it as a shell would, or unset it to run `fleet deploy`."
                           ) from None
    return Settings(
        webhook_secret=webhook_secret,
        gitlab_token=gitlab_token,
        read_token=_secret(values, "FLEET_READ_TOKEN",
                           required="the bearer token of the read API (GET /runs, /healthz)") or "",
        repo_url=check_repo_url(_required(
            values, "FLEET_REPO_URL", "the fleet repository to deploy from (URL, path or "
            "file://)")),
        state_dir=Path(values.get("FLEET_STATE_DIR") or DEFAULT_STATE_DIR),
        deploy_tag=values.get("FLEET_DEPLOY_TAG") or DEFAULT_TAG,
        deploy_command=tuple(command),
        deploy_timeout=_seconds(values, "FLEET_DEPLOY_TIMEOUT", 3600.0),
        health_timeout=_seconds(values, "FLEET_HEALTH_TIMEOUT", 5.0),
        health_check=_choice(values, "FLEET_HEALTH_CHECK", HEALTH_MODES),
        drift_interval=_seconds(values, "FLEET_DRIFT_INTERVAL", 900.0, allow_zero=True),
        drift_heal=_choice(values, "FLEET_DRIFT_HEAL", ("0", "1")) == "1",
        env=values,
    )


def _required(values: Mapping[str, str], name: str, what: str) -> str:
    """A non-empty setting, or :class:`WebhookError` naming it."""
    value = values.get(name, "").strip()
    if not value:
        raise WebhookError(f"{name} is not set: it names {what}",
                           hint=f"Set {name} in the environment or the config file.")
    return value


def _secret(values: Mapping[str, str], name: str, required: str = "") -> str | None:
    """A secret of at least MIN_SECRET_LENGTH characters (``None`` when unset and optional)."""
    value = values.get(name, "").strip()
    if not value:
        if required:
            raise WebhookError(f"{name} is not set: it names {required}", hint=SECRET_HINT)
        return None
    if len(value) < MIN_SECRET_LENGTH:
        raise WebhookError(
            f"{name} is too short ({len(value)} characters); use at least "
            f"{MIN_SECRET_LENGTH} random characters", hint=SECRET_HINT)
    return value


def _seconds(values: Mapping[str, str], name: str, default: float,
             allow_zero: bool = False) -> float:
    """A positive number of seconds (or 0 when ``allow_zero``), ``default`` when unset."""
    raw = values.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not (seconds >= 0 if allow_zero else seconds > 0) or seconds == float("inf"):
        raise WebhookError(f"{name}: {raw!r} is not a positive number of seconds"
                           + (" (or 0: off)" if allow_zero else ""),
                           hint=f"Set {name} to e.g. {default:g}.")
    return seconds


def _choice(values: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset)."""
    raw = values.get(name, "").strip() or choices[0]
    if raw not in choices:
        raise WebhookError(f"{name}: {raw!r} is not one of {', '.join(choices)}",
                           hint=f"Set {name} to one of: {', '.join(choices)}.")
    return raw
