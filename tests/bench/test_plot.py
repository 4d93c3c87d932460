"""``bench/plot.py``: the README's benchmark chart is what the committed JSON gives, drawn from
the data (a changed figure changes the chart), self-contained and readable without colour."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from bench.plot import CHART, SOURCE, render

pytest.importorskip("matplotlib")  # the dev group (scripts/setup installs it)


def test_the_committed_chart_is_what_the_committed_json_gives() -> None:
    done = subprocess.run([sys.executable, "bench/plot.py", "--check"], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert "deploy_vs_ansible.svg" in Path("README.md").read_text()


def test_the_chart_shows_each_median_and_changes_with_the_data() -> None:
    data = json.loads(SOURCE.read_text())
    svg = render(data)
    ElementTree.fromstring(svg)  # well-formed
    assert not re.search(r'(?:href|src)="(?!#)', svg)  # no external asset
    labels = set(re.findall(r">([0-9]+\.[0-9])<", svg))
    fleet = data["sizes"]["3"]["runs"]["fleet"]
    median = sorted(run["cold"]["wall_s"] for run in fleet)[len(fleet) // 2]
    assert f"{median:.1f}" in labels
    for hatch in ("Ansible", "Ansible + Mitogen", "our floor", "Nothing to change"):
        assert hatch in svg  # legend and titles as text, not colour alone
    changed = copy.deepcopy(data)
    for run in changed["sizes"]["3"]["runs"]["fleet"]:
        run["cold"]["wall_s"] = 123.4
    assert "123.4" in render(changed) and render(changed) != svg
    assert svg == CHART.read_text()
