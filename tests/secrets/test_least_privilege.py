"""The sealed repository file never holds the operator's private bus key: every recipient (the
webhook receiver among them) can open it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.keys import new_private_key
from fleet.control.secrets import BUS_KEY, Secrets
from tests.secrets.test_sealed import OLD_KEY, Project, editor


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    return Project(tmp_path)


def test_the_operators_private_bus_key_is_not_sealed(project: Project) -> None:
    """``encrypt`` seals the operator as its public half (the private key stays in the
    plaintext file); an edit that puts the private key in is refused, the file unchanged."""
    operator = new_private_key()
    plain = project.folder / "with-operator.yaml"
    plain.touch(mode=0o600)
    plain.write_text(f"fleet:\n  OPENROUTER_API_KEY: \"{OLD_KEY}\"\nagents: {{}}\n"
                     "identities:\n  operator:\n"
                     f"    FLEET_BUS_PRIVATE_KEY: \"{operator}\"\n")
    assert project.fleet("secrets", "encrypt", str(plain)).returncode == 0
    shown = project.fleet("secrets", "show", "--masked").stdout
    assert "FLEET_BUS_PUBLIC_KEYS" in shown and "FLEET_BUS_PRIVATE_KEY" not in shown
    before = project.sealed.read_bytes()
    script = editor(project.folder, f'cat {plain} > "$1"')
    done = project.fleet("secrets", "edit", EDITOR=script)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith(
        f"Error: {project.sealed}: identities.operator.FLEET_BUS_PRIVATE_KEY may not be sealed "
        "in the repository: every recipient (the webhook receiver too) could sign as the "
        "operator\n"), done.stderr
    assert "local $FLEET_SECRETS file" in done.stderr
    assert project.sealed.read_bytes() == before  # unchanged


def test_the_operator_as_its_public_half_is_sealed(project: Project) -> None:
    """As the receiver's plaintext copy has it: gateways go on trusting the operator."""
    plain = project.folder / "public-operator.yaml"
    plain.touch(mode=0o600)
    plain.write_text(Secrets(fleet={"OPENROUTER_API_KEY": OLD_KEY}, identities={
        "operator": {BUS_KEY: new_private_key()}}).receiver_copy())  # its public half
    done = project.fleet("secrets", "encrypt", str(plain))
    assert done.returncode == 0, done.stdout + done.stderr
