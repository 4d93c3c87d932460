"""The controller's secrets and the masker made of them, loaded once per deploy process (the
phases, the operations and the audit share them)."""

from __future__ import annotations

import functools

from fleet.control.secrets import Secrets, load_secrets
from fleet.core.masking import Masker


@functools.cache
def secrets() -> Secrets:
    """The controller's secrets (``$FLEET_SECRETS``), loaded once per process."""
    return load_secrets()


@functools.cache
def masker() -> Masker:
    """Hides every secret value (in every form it travels in) in what the deploy prints,
    logs or records: plain ``pyinfra`` output included, not only ``fleet``'s."""
    return Masker(secrets().values())
