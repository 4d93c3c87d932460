"""The registry's ``state: {snapshots: N}``: how many state snapshots an agent's node keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.core.errors import RegistryError
from fleet.core.registry import parse_registry

BASE = """\
wizards:
  bezalel:
    host: 192.0.2.20
    role: worker
    model: google/gemma-4-31b-it
"""


def test_snapshots_default_to_five_and_round_trip() -> None:
    assert parse_registry(BASE, Path("registry.yaml")).get("bezalel").state_snapshots == 5
    agent = parse_registry(BASE + "    state: {snapshots: 12}\n",
                           Path("registry.yaml")).get("bezalel")
    assert agent.state_snapshots == 12
    assert agent.to_dict()["state"] == {"snapshots": 12}
    again = parse_registry(yaml.safe_dump({"wizards": {"bezalel": agent.to_dict()}}),
                           Path("registry.yaml")).get("bezalel")
    assert again.state_snapshots == 12


@pytest.mark.parametrize(("value", "message"), [
    ("{snapshots: 0}", "registry.yaml:6: wizards.bezalel.state.snapshots: 0 is not a number of "
                       "snapshots to keep (1-1000)"),
    ("{snapshots: 1001}", "registry.yaml:6: wizards.bezalel.state.snapshots: 1001 is not a "
                          "number of snapshots to keep (1-1000)"),
    ("{snapshots: 'five'}", "registry.yaml:6: wizards.bezalel.state.snapshots: 'five' is not a "
                            "number of snapshots to keep (1-1000)"),
    ("{snapshots: true}", "registry.yaml:6: wizards.bezalel.state.snapshots: True is not a "
                          "number of snapshots to keep (1-1000)"),
    ("{keep: 3}", "registry.yaml:6: wizards.bezalel.state: unknown field 'keep'; allowed: "
                  "snapshots"),
    ("5", "registry.yaml:6: wizards.bezalel.state: 5 is not a mapping; write e.g. `state: "
          "{snapshots: 5}`"),
])
def test_a_bad_snapshots_setting_names_the_key(value: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_registry(BASE + f"    state: {value}\n", Path("registry.yaml"))
    assert caught.value.problems == [message]
