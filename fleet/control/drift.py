"""``fleet drift``: what a deploy of the repository would change on each host now, with the
file diffs (secrets masked). It is the real deploy's dry run (``--dry --diff``, the same
rollout code); the answer comes from its run record, where each host lists the operations
that would change (``planned``) and the diff of every file that would (``diffs``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.control.records import RunRecord
from fleet.control.rollout import RolloutOptions, deploy_fleet, select
from fleet.core.registry import Registry


@dataclass(frozen=True)
class HostDrift:
    """One host: the operations a deploy would run on it, the diffs, or why it was not checked."""

    agent: str
    status: str  # ``planned``, or ``failed`` when the host could not be checked
    operations: list[str] = field(default_factory=list)
    diffs: dict[str, list[str]] = field(default_factory=dict)
    reason: str = ""

    @property
    def drifted(self) -> bool:
        """True when a deploy would change something here, or the host could not be checked."""
        return self.status != "planned" or bool(self.operations)


@dataclass(frozen=True)
class DriftReport:
    """A drift check of the fleet, from its dry run's record."""

    run_id: str
    hosts: list[HostDrift]

    @property
    def drifted(self) -> list[HostDrift]:
        return [host for host in self.hosts if host.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "drifted": [host.agent for host in self.drifted],
                "hosts": [asdict(host) for host in self.hosts]}


def check_drift(registry: Registry, limit: Sequence[str] = (),
                echo: Callable[[str], None] = lambda _: None) -> DriftReport:
    """Dry-run the deploy of the selected agents; what would change on each."""
    names = select(registry, limit)
    result = deploy_fleet(registry, RolloutOptions(dry=True, diff=True, limit=tuple(limit)),
                          echo)
    return report_from_record(result.record, names)


def report_from_record(record: RunRecord, names: Sequence[str] | None = None) -> DriftReport:
    """The drift a dry run's record shows, for ``names`` (default: every host in it)."""
    entries = record.get("hosts", {})
    hosts = []
    for name in entries if names is None else names:
        entry = entries.get(name, {})
        status = entry.get("status", "failed")
        hosts.append(HostDrift(
            agent=name, status=status, operations=list(entry.get("planned", [])),
            diffs=dict(entry.get("diffs", {})),
            reason=entry.get("reason", "") or ("" if status == "planned" else "not checked")))
    return DriftReport(run_id=record.get("run_id", "?"), hosts=hosts)
