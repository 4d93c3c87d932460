"""``fleet.prestage``: true or false (off when absent); any other value is refused naming it,
and a set value is written back by ``to_dict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fleet.core.errors import RegistryError
from fleet.core.registry import parse_registry

AGENT = """\
wizards:
  solo: {host: 192.0.2.7, role: worker, model: m}
"""


def load(text: str, folder: Path):
    (folder / "souls").mkdir(exist_ok=True)
    (folder / "souls/solo.md").write_text("# solo\n")
    return parse_registry(text, folder / "registry.yaml")


@pytest.mark.parametrize(("line", "value"), [("", False), ("  prestage: true\n", True),
                                             ("  prestage: false\n", False)])
def test_prestage_is_read_and_written_back(tmp_path: Path, line: str, value: bool) -> None:
    registry = load("fleet:\n  name: f\n" + line + AGENT, tmp_path)
    assert registry.prestage is value
    assert registry.to_dict()["fleet"] == ({"name": "f", "prestage": True} if value
                                           else {"name": "f"})
    assert load(yaml.safe_dump(registry.to_dict()), tmp_path).prestage is value


SCALARS = st.one_of(st.booleans(), st.none(), st.integers(), st.floats(allow_nan=False),
                    st.text(st.characters(categories=("L", "N")), max_size=12),
                    st.lists(st.booleans(), max_size=2),
                    st.dictionaries(st.sampled_from(["on", "x"]), st.booleans(), max_size=1))


@given(SCALARS)
def test_only_true_or_false_is_a_prestage_setting(value: Any) -> None:
    setting = yaml.safe_dump({"prestage": value}, default_flow_style=True, width=1000)
    text = f"fleet: {setting.strip()}\n{AGENT}"  # the setting on line 1
    loaded = yaml.safe_load(text)["fleet"]["prestage"]  # what the registry reads
    if isinstance(loaded, bool):
        assert parse_registry(text, Path("registry.yaml")).prestage is loaded
        return
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, Path("registry.yaml"))
    assert caught.value.problems == [
        f"registry.yaml:1: fleet.prestage: {loaded!r} is not true or false; write "
        "`prestage: true` or "
        "`prestage: false`"]


def test_a_string_true_is_refused() -> None:
    text = 'fleet:\n  prestage: "yes"\n' + AGENT
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, Path("registry.yaml"))
    assert caught.value.problems == [
        "registry.yaml:2: fleet.prestage: 'yes' is not true or false; write `prestage: true` "
        "or `prestage: false`"]
