"""What the registry and the repository require of each agent now: its config file and hash,
its soul's hash. The deploy writes these; status, drift and the dashboard compare the node's
answers with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.control import render
from fleet.core.digests import file_sha256, text_sha256
from fleet.core.registry import Agent, Registry

if TYPE_CHECKING:  # the deploy imports this module; it needs no HTTP or SSH probing
    from fleet.control.status import AgentStatus


def config_json(agent: Agent) -> str:
    """The agent's ``config.json`` as the deploy writes it; its sha256 is the config hash
    ``/health`` reports."""
    data: dict[str, Any] = {"agent": agent.name, "role": agent.role, "model": agent.model,
                            "gateway_port": agent.gateway_port,
                            "capabilities": list(agent.capabilities),
                            "provider": agent.provider, "region": agent.region,
                            "config": agent.config}
    return render.config_json(data)


def config_hash(agent: Agent) -> str:
    """sha256 of :func:`config_json`."""
    return text_sha256(config_json(agent))


def soul_sha256(registry: Registry, agent: Agent) -> str | None:
    """sha256 of the agent's soul file in the repository (None when it cannot be read)."""
    return file_sha256(registry.soul_path(agent))


@dataclass(frozen=True)
class Expected:
    """One agent's required config and soul hashes (the release comes from the deploy)."""

    config_hash: str
    soul_sha256: str | None


def expected(registry: Registry, agent: Agent) -> Expected:
    """What ``agent`` must run now, by the registry and the soul file."""
    return Expected(config_hash=config_hash(agent), soul_sha256=soul_sha256(registry, agent))


@dataclass(frozen=True)
class Judgement:
    """How one agent compares with what it must run: ``state`` is ``ok``, ``drift`` or
    ``down``; each part is ``ok``, ``drift`` or ``unknown``; ``drift`` says what differs."""

    state: str
    release: str
    soul: str
    config: str
    drift: tuple[str, ...]


def _compare(actual: str | None, wanted: str | None, absent: str) -> str:
    if actual is None or wanted is None:
        return absent
    return "ok" if actual == wanted else "drift"


def compare(release: str | None, soul_sha256: str | None, config_hash: str | None,
            wanted: Expected, wanted_release: str | None,
            absent: str = "unknown") -> tuple[dict[str, str], tuple[str, ...]]:
    """The drift triple, compared in one place: what an agent runs (its release, soul and
    config hashes) against what it must run. Each part is ``ok``, ``drift``, or ``absent``
    where either side is None (``unknown`` for a probe that did not say; ``drift`` where a
    missing file is itself the difference); with a line for each part that drifted."""
    parts = {"release": _compare(release, wanted_release, absent),
             "soul": _compare(soul_sha256, wanted.soul_sha256, absent),
             "config": _compare(config_hash, wanted.config_hash, absent)}
    found = []
    if parts["release"] == "drift":
        found.append(f"release is {release}, expected {wanted_release}")
    if parts["soul"] == "drift":
        found.append(f"soul.md is {short(soul_sha256)}, the soul file is "
                     f"{short(wanted.soul_sha256)}")
    if parts["config"] == "drift":
        found.append(f"config.json is {short(config_hash)}, the registry's is "
                     f"{short(wanted.config_hash)}")
    return parts, tuple(found)


def judge(status: AgentStatus, wanted: Expected, release: str | None) -> Judgement:
    """Compare a probe of the agent with what the registry, the soul file and ``release``
    (None: not compared) require; an agent that is not healthy is ``down``."""
    parts, found = compare(status.release, status.soul_sha256, status.config_hash, wanted,
                           release)
    state = "down" if not status.healthy else "drift" if found else "ok"
    return Judgement(state=state, release=parts["release"], soul=parts["soul"],
                     config=parts["config"], drift=found)


def short(digest: str | None) -> str:
    """The first 12 characters of a hash (``-`` for none)."""
    return (digest or "-")[:12]


def wanted_release(project: Path | None = None) -> tuple[str | None, str]:
    """The release every agent must run and where that comes from: the fleet repository in
    ``project`` (default: the working directory, when it holds ``deploy.py``), else the last
    deploy recorded under the records dir; ``(None, reason)`` when neither says."""
    from fleet.control.records import latest_deploy

    root = project or Path.cwd()
    if (root / "deploy.py").is_file() and (root / "inventory.py").is_file():
        from fleet.control.release import release_id  # the release builder: only here
        from fleet.core.release_marker import Broken

        return release_id(root, broken=Broken.NO), f"the repository in {root}"
    deployed = latest_deploy()
    if deployed is not None:
        return deployed.get("release"), f"the last deploy (run {deployed.get('run_id')})"
    return None, "no fleet repository here and no deploy recorded"
