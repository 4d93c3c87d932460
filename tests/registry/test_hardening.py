"""Registry values that reach node shells, paths and unit names are matched in full: agent
names, capabilities, hosts and SSH users; soul files stay inside the registry's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.core.errors import RegistryError
from fleet.core.registry import TEXT_RULE, load_registry, parse_registry

AGENT = """\
wizards:
  {name}:
    host: {host}
    role: orchestrator
    model: m
"""


def problems(text: str, path: Path = Path("registry.yaml")) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, path)
    return caught.value.problems


def test_agent_name_with_a_trailing_newline_is_refused() -> None:
    text = 'wizards:\n  "bezalel\\n": {host: 192.0.2.1, role: worker, model: m}\n'
    assert problems(text) == [
        f"registry.yaml:2: wizards.bezalel\\n: 'bezalel\\n' holds a newline at position 8; "
        f"remove it ({TEXT_RULE})"]


def test_host_with_a_trailing_newline_or_zone_id_is_refused() -> None:
    found = problems(AGENT.format(name="a", host='"node.example\\n"'))
    assert found == [f"registry.yaml:3: wizards.a.host: 'node.example\\n' holds a newline at "
                     f"position 13; remove it ({TEXT_RULE})"]
    found = problems(AGENT.format(name="a", host='"fe80::1%x;reboot"'))
    assert found[0].startswith("registry.yaml:3: wizards.a.host: 'fe80::1%x;reboot' is not a ")


def test_capability_with_a_trailing_newline_is_refused() -> None:
    text = AGENT.format(name="a", host="192.0.2.1") + '    capabilities: ["ok", "x\\n"]\n'
    assert problems(text) == [
        f"registry.yaml:6: wizards.a.capabilities[1]: 'x\\n' holds a newline at position 2; "
        f"remove it ({TEXT_RULE})"]


@pytest.mark.parametrize("user", ["deploy;id", "-oProxyCommand=x", "Admin",
                                  "a" * 33, "de ploy"])
def test_ssh_user_must_be_a_posix_user_name(user: str) -> None:
    text = AGENT.format(name="a", host="192.0.2.1") + f'    ssh_user: "{user}"\n'
    value = user.replace("\\n", "\n")
    assert problems(text) == [
        f"registry.yaml:6: wizards.a.ssh_user: {value!r} is not a user name (1-32 characters: "
        "lowercase letters, digits, '_' and '-', starting with a letter or '_')"]


@pytest.mark.parametrize("user", ["root", "deploy", "_svc", "ops-1", "a" * 32])
def test_posix_user_names_are_accepted(user: str) -> None:
    text = ("fleet:\n  become: sudo\n" + AGENT.format(name="a", host="192.0.2.1")
            + f"    ssh_user: {user}\n")
    assert parse_registry(text, Path("registry.yaml")).get("a").ssh_user == user


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    """A registry folder with a soul inside, a secret outside and a symlink leading out."""
    folder = tmp_path / "fleet"
    (folder / "souls").mkdir(parents=True)
    (folder / "souls/a.md").write_text("# a\n")
    (tmp_path / "secrets.yaml").write_text("X: y\n")
    os.symlink(tmp_path / "secrets.yaml", folder / "souls/link.md")
    return folder


@pytest.mark.parametrize(("soul", "problem"), [
    ("/etc/shadow", "is an absolute path"),
    ("../secrets.yaml", "resolves outside the registry's folder {folder} (to {outside})"),
    ("souls/../../secrets.yaml", "resolves outside the registry's folder {folder} (to {outside})"),
    ("souls/link.md", "resolves outside the registry's folder {folder} (to {outside})"),
    (".", "resolves outside the registry's folder {folder} (to {folder})"),
])
def test_soul_must_resolve_inside_the_registry_folder(fleet_dir: Path, soul: str,
                                                      problem: str) -> None:
    registry = fleet_dir / "registry.yaml"
    registry.write_text(AGENT.format(name="a", host="192.0.2.1") + f"    soul: {soul}\n")
    with pytest.raises(RegistryError) as caught:
        load_registry(registry)
    message = problem.format(folder=fleet_dir.resolve(),
                             outside=(fleet_dir.parent / "secrets.yaml").resolve())
    assert caught.value.problems == [
        f"{registry}:6: wizards.a.soul: {soul!r} {message}; write a path relative to the "
        "registry's folder, inside it (e.g. souls/NAME.md)"]


def test_soul_inside_the_folder_is_accepted(fleet_dir: Path) -> None:
    registry = fleet_dir / "registry.yaml"
    registry.write_text(AGENT.format(name="a", host="192.0.2.1") + "    soul: souls/a.md\n")
    loaded = load_registry(registry)
    assert loaded.soul_path(loaded.get("a")) == fleet_dir / "souls/a.md"


def test_soul_turned_into_a_symlink_after_loading_is_refused(fleet_dir: Path) -> None:
    registry = fleet_dir / "registry.yaml"
    registry.write_text(AGENT.format(name="a", host="192.0.2.1"))
    loaded = load_registry(registry)
    os.symlink(fleet_dir.parent / "secrets.yaml", fleet_dir / "souls/a2.md")
    (fleet_dir / "souls/a.md").unlink()
    os.rename(fleet_dir / "souls/a2.md", fleet_dir / "souls/a.md")
    with pytest.raises(RegistryError) as caught:
        loaded.soul_path(loaded.get("a"))
    assert caught.value.problems == [
        f"{registry}:2: wizards.a.soul: 'souls/a.md' resolves outside the registry's folder "
        f"{fleet_dir.resolve()} (to {(fleet_dir.parent / 'secrets.yaml').resolve()})"]
