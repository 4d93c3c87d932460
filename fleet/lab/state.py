"""The lab's node list (``<lab dir>/nodes.json``), written at ``up`` and read by status."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "nodes.json"


@dataclass(frozen=True)
class NodeRecord:
    """What ``up`` created for one node."""

    name: str
    ip: str
    position: int
    netns: str
    region: str | None = None


def write_records(lab_path: Path, index: int, records: list[NodeRecord]) -> None:
    """Store the node list and the lab index."""
    data = {"index": index, "nodes": [asdict(record) for record in records]}
    (lab_path / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")


def read_records(lab_path: Path) -> list[NodeRecord]:
    """The stored node list (empty when the lab is down)."""
    try:
        data = json.loads((lab_path / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [NodeRecord(**node) for node in data.get("nodes", [])]
