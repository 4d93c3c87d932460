"""``fleet bus`` and ``fleet gateway`` commands: help text and one-line errors."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.cli.bus import bus
from fleet.cli.gateway import gateway
from tests.bus.conftest import KEYS


@pytest.mark.parametrize("group", [bus, gateway], ids=["bus", "gateway"])
def test_every_command_has_help_text(group: click.Group) -> None:
    assert group.help
    for name, command in group.commands.items():
        assert command.help, f"{group.name} {name} has no help text"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{group.name} {name} {param.opts} has no help text"


def test_send_without_a_key_says_how_to_get_one(registry_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_BUS_PRIVATE_KEY", KEYS["bezalel"])  # not ezra's: not used
    monkeypatch.setenv("FLEET_AGENT", "bezalel")
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    result = CliRunner().invoke(main, ["--registry", str(registry_path), "bus", "send",
                                       "bezalel", "alert", "hi", "--from", "ezra"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: no private bus key for 'ezra' or the operator (keys for: none)\n"
        "Hint: Set FLEET_SECRETS (identities.operator.FLEET_BUS_PRIVATE_KEY, from `fleet init`) "
        "or "
        "FLEET_BUS_PRIVATE_KEY.\n")


def test_unreachable_gateway_is_one_line(registry_path: Path, operator_secrets: Path) -> None:
    result = CliRunner().invoke(main, ["--registry", str(registry_path), "bus", "tail",
                                       "ghost"])
    assert result.exit_code == 1
    first, hint = result.output.splitlines()
    assert first.startswith("Error: http://127.0.0.1:") and ": cannot reach the gateway" in first
    assert hint == "Hint: Is the agent's gateway running?"


def test_serve_unknown_agent_names_the_known_ones(registry_path: Path) -> None:
    result = CliRunner().invoke(main, ["--registry", str(registry_path), "gateway", "serve",
                                       "--agent", "nobody"])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: {registry_path}: no agent named 'nobody' (agents: ezra, bezalel, allegro, "
        "ghost)\n")
