"""What the fleet runs now, asked of the fleet itself: is a release deployed everywhere?

The receiver's database is not the truth (an operator's ``fleet rollback`` bypasses it); every
agent's ``/health`` is. ``FLEET_HEALTH_CHECK`` picks the probe, as for the check after a
deploy: ``fleet`` (SSH and ``/health``, :func:`fleet.status.probe_fleet`), ``http``
(``/health`` only) or ``off`` (nothing is asked, so nothing counts as deployed).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.registry import load_registry
from fleet.status import probe_fleet, probe_health


def fleet_releases(registry_path: Path, mode: str, timeout: float) -> list[dict[str, Any]]:
    """One record per agent (``agent``, ``healthy``, ``release``, ...); ``[]`` when ``mode``
    is ``off`` or the registry cannot be loaded (the deploy reports that itself)."""
    if mode == "off":
        return []
    try:
        registry = load_registry(registry_path)
        if mode == "fleet":
            return [status.to_dict() for status in probe_fleet(registry, timeout)]
    except FleetError:
        return []
    agents = list(registry)
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(agents)))) as pool:
        probes = list(pool.map(lambda agent: probe_health(agent, timeout), agents))
    return [{"agent": agent.name, "health": health, "healthy": health == "ok",
             "release": body.get("release")}
            for agent, (health, body) in zip(agents, probes, strict=True)]


def deployed_everywhere(records: list[dict[str, Any]], release: str) -> bool:
    """True when every agent answered healthy and runs ``release``."""
    return bool(records) and all(record.get("healthy") and record.get("release") == release
                                 for record in records)
