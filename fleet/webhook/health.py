"""Fleet health from the registry a deploy used, probed the one way ``FLEET_HEALTH_CHECK``
says: ``fleet`` (default: :func:`fleet.control.status.probe_fleet`, SSH and the health endpoint of
every agent), ``http`` (health endpoints only, all at once) or ``off`` (nothing is asked).
Used for the check after a deploy (:func:`check_health`) and for what the fleet runs now
(:mod:`fleet.webhook.current`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleet.control.status import probe_fleet, probe_health
from fleet.core.errors import FleetError
from fleet.core.registry import load_registry


def probe(registry_path: Path, mode: str, timeout: float) -> list[dict[str, Any]]:
    """One record per agent (``agent``, ``health``, ``healthy``, ``release``, ...) by
    ``mode``; ``[]`` for ``off``; :class:`FleetError` when the registry cannot load."""
    if mode == "off":
        return []
    registry = load_registry(registry_path)
    if mode == "fleet":
        return [status.to_dict() for status in probe_fleet(registry, timeout)]
    agents = list(registry)
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(agents)))) as pool:
        probes = list(pool.map(lambda agent: probe_health(agent, timeout), agents))
    return [{"agent": agent.name, "health": health, "healthy": health == "ok",
             "release": body.get("release")}
            for agent, (health, body) in zip(agents, probes, strict=True)]


def check_health(registry_path: Path, mode: str, timeout: float) -> tuple[bool, list[Any]]:
    """``(all healthy, one record per agent)``; a registry that cannot load is unhealthy."""
    try:
        records = probe(registry_path, mode, timeout)
    except FleetError as exc:
        return False, [{"agent": None, "healthy": False, "problems": str(exc).splitlines()}]
    return all(record["healthy"] for record in records), records
