"""The running release's identity, read where the code runs (gateway, runtime) and written by
the release builder (:mod:`fleet.control.release`).

A release's ``site/`` holds ``RELEASE`` (its id) and, when it was built broken on purpose
(``FLEET_BROKEN_RELEASE`` on the controller), ``BROKEN_RELEASE`` (how: ``unhealthy`` or
``exit``).
"""

from __future__ import annotations

import os
from pathlib import Path

import fleet

BROKEN_ENV = "FLEET_BROKEN_RELEASE"
RELEASE_FILE = "RELEASE"
BROKEN_MARKER = "BROKEN_RELEASE"
BROKEN_SUFFIX = {"unhealthy": "-broken", "exit": "-broken-exit"}


def running_release(package_file: str | None = None) -> tuple[str, str]:
    """(release id, how it was built broken or ``""``) of the code running now; ``("dev", "")``
    off a release."""
    site = Path(package_file or fleet.__file__).resolve().parent.parent
    marker = site / RELEASE_FILE
    if not marker.is_file():
        return os.environ.get("FLEET_RELEASE", "dev"), ""
    broken = site / BROKEN_MARKER
    kind = broken.read_text(encoding="utf-8").strip() if broken.is_file() else ""
    return marker.read_text(encoding="utf-8").strip(), (
        kind if kind in BROKEN_SUFFIX else "unhealthy" if broken.exists() else "")
