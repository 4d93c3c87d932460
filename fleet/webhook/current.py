"""What the fleet runs now, asked of the fleet itself: is a release deployed everywhere?

The receiver's database is not the truth (an operator's ``fleet rollback`` bypasses it); every
agent's ``/health`` is, probed as for the check after a deploy (:mod:`fleet.webhook.health`;
with ``FLEET_HEALTH_CHECK=off`` nothing is asked, so nothing counts as deployed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.core.errors import FleetError
from fleet.webhook.health import probe


def fleet_releases(registry_path: Path, mode: str, timeout: float) -> list[dict[str, Any]]:
    """One record per agent (``agent``, ``healthy``, ``release``, ...) by
    :func:`fleet.webhook.health.probe`; ``[]`` when ``mode`` is ``off`` or the registry cannot
    be loaded (the deploy reports that itself)."""
    try:
        return probe(registry_path, mode, timeout)
    except FleetError:
        return []


def deployed_everywhere(records: list[dict[str, Any]], release: str) -> bool:
    """True when every agent answered healthy and runs ``release``."""
    return bool(records) and all(record.get("healthy") and record.get("release") == release
                                 for record in records)
