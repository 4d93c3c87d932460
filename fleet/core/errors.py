"""Typed exceptions raised by the fleet library.

The library never prints: it raises one of these. The CLI turns a ``FleetError``
into a single line (``Error: <message>``) followed by ``Hint: <hint>`` when one is set.
"""

from __future__ import annotations

from bus.errors import BusError, HintedError

__all__ = [
    "USER_ERRORS",
    "BusError",
    "DeployError",
    "FleetError",
    "LabError",
    "RegistryError",
    "SecretsError",
    "StateError",
    "StatusError",
    "WebhookError",
    "WorkError",
]


class FleetError(HintedError):
    """Base of every user-facing error of the fleet library; ``hint`` says what to do."""


class RegistryError(FleetError):
    """The fleet registry file is missing, unreadable or invalid."""

    hint = "Fix the registry file, then check it with `fleet registry validate`."

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = problems
        super().__init__("\n".join(problems), hint)


class LabError(FleetError):
    """The local lab fleet cannot be built, started or stopped."""


class StatusError(FleetError):
    """A fleet status probe could not be run."""


class DeployError(FleetError):
    """A deploy, rollback or release build failed."""


class SecretsError(FleetError):
    """The controller-side secrets file is missing, unsafe or invalid."""


class StateError(FleetError):
    """An agent's state could not be listed, backed up or restored."""


class WebhookError(FleetError):
    """The webhook receiver is misconfigured."""


class WorkError(FleetError):
    """An autonomous-work command (``fleet work``: a schedule run now) failed."""


USER_ERRORS = (HintedError,)
"""What a caller reports as one line with a hint: a :class:`FleetError`, or a
:class:`BusError` (from ``bus``, which stands alone, so it is not a :class:`FleetError`)."""
