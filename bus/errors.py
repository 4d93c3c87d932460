"""The bus's typed exception: the library never prints, it raises :class:`BusError`, whose
``hint`` says what to do (the fleet CLI prints it as one ``Error:`` line and a ``Hint:``).
Its base :class:`HintedError` is also the base of the fleet library's errors."""

from __future__ import annotations


class HintedError(Exception):
    """An error for a person: its message, and a ``hint`` saying what to do (the base of
    :class:`BusError` and of the fleet's ``FleetError``)."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class BusError(HintedError):
    """A bus message could not be built, stored or sent; ``hint`` says what to do."""
