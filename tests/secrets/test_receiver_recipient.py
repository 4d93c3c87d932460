"""``fleet secrets init --receiver``: the webhook receiver's recipient, read over SSH from the
node its deploy made the identity on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fleet.control import sealed_edit
from fleet.control.sealed import SealedError
from fleet.core.registry import Agent, Registry, load_registry

REPO = Path(__file__).resolve().parents[2]
RECIPIENT = "age1" + "q" * 58


@pytest.fixture
def registry() -> Registry:
    """The example registry (ezra-primary has the ``webhook-receiver`` capability)."""
    return load_registry(REPO / "registry.yaml")


def ssh_answering(monkeypatch: pytest.MonkeyPatch, script: str) -> list[str]:
    """Make ``ssh`` to the receiver run ``script`` locally; the agents it was asked for."""
    asked: list[str] = []

    def command(agent: Agent, registry: Registry, timeout: float) -> list[str]:
        asked.append(agent.name)
        return ["sh", "-c", script, "ssh"]  # the remote command comes as $1, unused

    monkeypatch.setattr("fleet.control.status.ssh_command", command)
    return asked


def test_the_receivers_recipient_is_read_from_its_node(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = ssh_answering(monkeypatch, f"echo {RECIPIENT}")
    assert sealed_edit.receiver_recipient(registry) == RECIPIENT
    assert asked == ["ezra-primary"]


def test_a_node_without_the_identity_says_to_deploy_first(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    ssh_answering(monkeypatch, "echo 'cat: /etc/fleet/webhook/age-recipient.txt: No such "
                               "file or directory' >&2; exit 1")
    with pytest.raises(SealedError) as raised:
        sealed_edit.receiver_recipient(registry)
    assert str(raised.value) == (
        "ezra-primary: cannot read the receiver's recipient /etc/fleet/webhook/age-recipient.txt"
        " (cat: /etc/fleet/webhook/age-recipient.txt: No such file or directory)")
    assert (raised.value.hint or "").startswith("Deploy the receiver first")


def test_a_fleet_without_a_receiver_is_named(registry: Registry) -> None:
    agents = {name: replace(agent, capabilities=()) for name, agent in registry.agents.items()}
    with pytest.raises(SealedError, match="no agent has the 'webhook-receiver' capability"):
        sealed_edit.receiver_recipient(replace(registry, agents=agents))
