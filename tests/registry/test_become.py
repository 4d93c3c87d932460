"""``fleet.become``: a non-root ``ssh_user`` deploys through sudo. The registry refuses an
unknown method and a non-root user without it; the inventory and ``fleet test`` pass sudo on."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.control import livetest
from fleet.control.inventory import host_data
from fleet.core.errors import RegistryError
from fleet.core.registry import TEXT_RULE, parse_registry

AGENT = """\
wizards:
  solo:
    host: 192.0.2.7
    role: worker
    model: m
    ssh_user: {user}
"""


def load(text: str, folder: Path):
    (folder / "souls").mkdir(exist_ok=True)
    (folder / "souls/solo.md").write_text("# solo\n")
    return parse_registry(text, folder / "registry.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, Path("registry.yaml"))
    return caught.value.problems


def test_become_sudo_is_read_and_written_back(tmp_path: Path) -> None:
    registry = load("fleet:\n  become: sudo\n" + AGENT.format(user="deploy"), tmp_path)
    assert registry.become == "sudo"
    assert registry.to_dict()["fleet"] == {"name": "fleet", "become": "sudo"}


def test_no_become_is_left_out(tmp_path: Path) -> None:
    registry = load(AGENT.format(user="root"), tmp_path)
    assert registry.become is None
    assert "become" not in registry.to_dict()["fleet"]


@pytest.mark.parametrize(("value", "shown"), [("su", "'su'"), ("doas", "'doas'")])
def test_unknown_become_method_is_refused(value: str, shown: str) -> None:
    text = f"fleet:\n  become: {value}\n" + AGENT.format(user="deploy")
    assert problems(text) == [
        f"registry.yaml:2: fleet.become: {shown} is not a way to become root (sudo); write "
        "`become: sudo` for a login user with passwordless sudo, or leave it out to log in as "
        "root"]


def test_become_with_a_newline_is_refused_for_the_newline() -> None:
    text = 'fleet:\n  become: "sudo\\n"\n' + AGENT.format(user="deploy")
    assert problems(text) == [
        f"registry.yaml:2: fleet.become: 'sudo\\n' holds a newline at position 5; remove it "
        f"({TEXT_RULE})"]


def test_become_must_be_a_string() -> None:
    text = "fleet:\n  become: true\n" + AGENT.format(user="root")
    assert problems(text) == ["registry.yaml:2: fleet.become: True is not a string"]


def test_non_root_user_without_become_is_refused() -> None:
    assert problems(AGENT.format(user="deploy")) == [
        "registry.yaml:2: wizards.solo.ssh_user: 'deploy' is not root and the fleet sets no "
        "`become`; add `become: sudo` under `fleet:` (the user needs passwordless sudo)"]


def test_inventory_sets_pyinfra_sudo_only_with_become(tmp_path: Path) -> None:
    sudo = load("fleet:\n  become: sudo\n" + AGENT.format(user="deploy"), tmp_path)
    data = host_data(sudo.get("solo"), sudo)
    assert (data["ssh_user"], data["_sudo"]) == ("deploy", True)
    plain = load(AGENT.format(user="root"), tmp_path)
    assert "_sudo" not in host_data(plain.get("solo"), plain)


def test_live_checks_use_sudo_with_become(tmp_path: Path) -> None:
    sudo = load("fleet:\n  become: sudo\n" + AGENT.format(user="deploy"), tmp_path)
    spec, options = livetest.testinfra_target(sudo.get("solo"), sudo)
    assert (spec, options["sudo"]) == ("ssh://deploy@192.0.2.7:22", True)
    plain = load(AGENT.format(user="root"), tmp_path)
    assert "sudo" not in livetest.testinfra_target(plain.get("solo"), plain)[1]
