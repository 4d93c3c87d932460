"""The benchmark's Ansible playbook reaches our deploy's end state (bench/ansible/): on a
2-node lab (orchestrator and worker) one run leaves every agent as ``fleet status``,
``fleet drift`` and the ``tests/live`` suite want, and a second run changes nothing."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench._common import clone, equivalence_problems, run_measured
from bench.ansible import tool
from fleet import lab
from tests.lab_fixtures import claim_test_lab, fresh_lab, skip_unless_root

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def venv() -> Path:
    """The bench's own Ansible virtualenv (installed from PyPI the first time)."""
    try:
        return tool.ensure_venv()
    except tool.AnsibleUnavailable as exc:
        pytest.skip(f"ansible-core cannot be installed from PyPI here: {exc}")


@pytest.fixture
def lab_of_two() -> Iterator[Path]:
    """A fresh lab of its own with 2 nodes; its registry (taken down afterwards)."""
    skip_unless_root()
    claimed = claim_test_lab("ansible")
    try:
        yield fresh_lab(claimed.lab, nodes=2)
    finally:
        lab.down(claimed.lab)
        claimed.release()


def test_playbook_reaches_our_end_state_and_then_changes_nothing(
        venv: Path, lab_of_two: Path, tmp_path: Path) -> None:
    scratch, checkout = clone()
    control = Path(tempfile.mkdtemp(prefix="cp-"))  # short: sockets need paths < 108 bytes
    (control / "tmp").mkdir()
    try:
        inventory = tool.generate_inventory(checkout, lab_of_two, tmp_path / "inventory")
        hosts = yaml.safe_load(inventory.read_text())["all"]["children"]
        release = hosts["orchestrator"]["hosts"]["ezra-primary"]["release_id"]
        command, env = tool.playbook_command(venv, inventory, False, control)
        first = run_measured(command, env, checkout, tmp_path / "first.log")
        assert first.returncode == 0, first.output()[-3000:]
        assert equivalence_problems(checkout, lab_of_two, release) == []
        second = run_measured(command, env, checkout, tmp_path / "second.log")
        assert second.returncode == 0, second.output()[-3000:]
        counts = tool.recap(second.output())
        assert sorted(counts) == ["bezalel", "ezra-primary"]
        assert {name: host["changed"] for name, host in counts.items()} == {
            "bezalel": 0, "ezra-primary": 0}
    finally:
        tool.close_masters(control)
        scratch.cleanup()
