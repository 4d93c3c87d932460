"""The running release's identity, read where the code runs (gateway, runtime) and written by
the release builder (:mod:`fleet.control.release`).

A release's ``site/`` holds ``RELEASE`` (its id) and, when it was built broken on purpose
(``FLEET_BROKEN_RELEASE`` on the controller), ``BROKEN_RELEASE`` (how: ``unhealthy`` or
``exit``).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import fleet

BROKEN_ENV = "FLEET_BROKEN_RELEASE"
RELEASE_FILE = "RELEASE"
BROKEN_MARKER = "BROKEN_RELEASE"


class Broken(Enum):
    """How a release was built broken on purpose (the test hook ``FLEET_BROKEN_RELEASE``):
    not (``NO``, false), a gateway whose ``/health`` answers 503 (``UNHEALTHY``: asked with
    ``1``, ``true`` or ``yes``; id suffix ``-broken``) or one that exits at start-up (``EXIT``:
    asked with ``exit``; ``-broken-exit``). The value is what ``BROKEN_RELEASE`` holds."""

    NO = ""
    UNHEALTHY = "unhealthy"
    EXIT = "exit"

    def __bool__(self) -> bool:
        return self is not Broken.NO

    @property
    def id_suffix(self) -> str:
        """What the release id ends with."""
        return {Broken.NO: "", Broken.UNHEALTHY: "-broken", Broken.EXIT: "-broken-exit"}[self]

    @property
    def asked_with(self) -> str:
        """The ``FLEET_BROKEN_RELEASE`` value that builds it (``""``: a normal release)."""
        return {Broken.NO: "", Broken.UNHEALTHY: "1", Broken.EXIT: "exit"}[self]

    @classmethod
    def asked(cls, value: str) -> Broken:
        """The kind a ``FLEET_BROKEN_RELEASE`` value asks for (anything else: ``NO``)."""
        word = value.strip().lower()
        return cls.EXIT if word == "exit" else cls.UNHEALTHY if word in (
            "1", "true", "yes") else cls.NO


def running_release(package_file: str | None = None) -> tuple[str, Broken]:
    """(release id, how it was built broken) of the code running now; ``("dev", Broken.NO)``
    off a release. A ``BROKEN_RELEASE`` file that names no kind means ``UNHEALTHY``."""
    site = Path(package_file or fleet.__file__).resolve().parent.parent
    marker = site / RELEASE_FILE
    if not marker.is_file():
        return os.environ.get("FLEET_RELEASE", "dev"), Broken.NO
    flag = site / BROKEN_MARKER
    kind = flag.read_text(encoding="utf-8").strip() if flag.is_file() else ""
    known = {member.value for member in Broken if member}
    broken = Broken(kind) if kind in known else Broken.UNHEALTHY if flag.exists() else Broken.NO
    return marker.read_text(encoding="utf-8").strip(), broken
