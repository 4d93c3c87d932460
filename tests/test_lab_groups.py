"""Lab tests on xdist workers: each module whole in one group, the session lab's users together
(tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pytest_collection_modifyitems


@dataclass
class Item:
    """A collected test as the hook sees it."""

    path: Path
    fixturenames: list[str]
    markers: list[Any] = field(default_factory=list)

    def get_closest_marker(self, name: str) -> Any:
        return next((mark for mark in self.markers if mark.name == name), None)

    def add_marker(self, mark: Any) -> None:
        self.markers.append(mark.mark)


def group(item: Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark else None


def test_a_module_using_the_session_lab_goes_whole_to_its_group_and_own_labs_to_another() -> None:
    lab = pytest.mark.lab.mark
    items = [Item(Path("deploy/test_a.py"), ["fleet", "lab_registry"], [lab]),
             Item(Path("deploy/test_a.py"), ["tmp_path"], [lab]),  # same module: same worker
             Item(Path("deploy/test_b.py"), ["own"], [lab]),
             Item(Path("bus/test_c.py"), ["tmp_path"])]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [group(item) for item in items] == ["lab", "lab", "own-labs", None]
