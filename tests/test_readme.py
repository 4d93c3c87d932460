"""What a new user needs from the README, checked against the code it describes."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fleet.cli import main
from fleet.lab.paths import DEFAULT_LAB_ROOT

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_lab_row_names_lab_and_every_lab_command_takes_it() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `fleet lab up"))
    assert "[--lab NAME]" in row and "$FLEET_LAB" in row
    for command in ("up", "down", "status", "ssh", "partition", "heal"):
        assert "--lab" in CliRunner().invoke(main, ["lab", command, "--help"]).output, command


def test_lab_down_says_the_labs_folder_stays() -> None:
    assert f"`{DEFAULT_LAB_ROOT}/NAME`" in README
    assert "keeps the lab's folder" in README


def test_state_list_explains_a_backups_release_dashes() -> None:
    assert "`release - -> -`" in README
