"""Fleet health after a deploy, from the registry the deploy used.

``FLEET_HEALTH_CHECK`` picks the probe: ``fleet`` (default: :func:`fleet.status.probe_fleet`,
SSH and the health endpoint of every agent), ``http`` (health endpoints only) or ``off``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.registry import load_registry
from fleet.status import probe_fleet, probe_health


def check_health(registry_path: Path, mode: str, timeout: float) -> tuple[bool, list[Any]]:
    """``(all healthy, one record per agent)``; a registry that cannot load is unhealthy."""
    if mode == "off":
        return True, []
    try:
        registry = load_registry(registry_path)
        if mode == "http":
            records = []
            for agent in registry:
                health, _body = probe_health(agent, timeout)
                records.append({"agent": agent.name, "health": health,
                                "healthy": health == "ok"})
        else:
            records = [status.to_dict() for status in probe_fleet(registry, timeout)]
    except FleetError as exc:
        return False, [{"agent": None, "healthy": False, "problems": str(exc).splitlines()}]
    return all(record["healthy"] for record in records), records
