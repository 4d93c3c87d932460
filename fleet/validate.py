"""Checks of values that reach a shell, a path or a unit name on a node: matched in full
(``re.fullmatch``), refused with a typed error naming the value and the allowed form."""

from __future__ import annotations

import re

from fleet.errors import FleetError
from fleet.nodectl import RELEASE_ID_FORM, RELEASE_ID_RE

__all__ = ["RELEASE_ID_FORM", "RELEASE_ID_RE", "USER_NAME_FORM", "USER_NAME_RE",
           "ValidationError", "check_release_id", "check_user_name"]

# POSIX portable user names as Debian's adduser accepts them by default.
USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
USER_NAME_FORM = ("1-32 characters: lowercase letters, digits, '_' and '-', starting with a "
                  "letter or '_'")


class ValidationError(FleetError):
    """A value is not of the form it must have (a release id, a user name)."""


def check_release_id(value: str) -> str:
    """``value`` if it is a release id (``fleet rollback --to``), else :class:`ValidationError`."""
    if not isinstance(value, str) or not RELEASE_ID_RE.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a release id ({RELEASE_ID_FORM})",
            hint="Pass a release id as `fleet status` or the run records show it, "
                 "e.g. --to 444a224b3f00.")
    return value


def check_user_name(value: str) -> str:
    """``value`` if it is a POSIX user name, else :class:`ValidationError`."""
    if not isinstance(value, str) or not USER_NAME_RE.fullmatch(value):
        raise ValidationError(f"{value!r} is not a user name ({USER_NAME_FORM})")
    return value
