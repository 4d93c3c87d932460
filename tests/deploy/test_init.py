"""``fleet init``: a valid starter registry with souls, a 0600 secrets file of fresh keys that
the deploy loads, next steps printed; an existing file is never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from bus.keys import parse_keyring, signing_key
from fleet.cli import main
from fleet.control.secrets import load_secrets
from fleet.core.registry import load_registry


def run(folder: Path, *args: str) -> Result:
    """``fleet init ARGS`` in ``folder`` (the working directory), no registry/secrets env."""
    assert Path.cwd() == folder
    return CliRunner().invoke(main, ["init", *args],
                              env={"FLEET_REGISTRY": "", "FLEET_SECRETS": ""})


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_starter_files_are_valid_and_secrets_fresh(folder: Path) -> None:
    done = run(folder, "ezra", "bezalel")
    assert done.exit_code == 0, done.output
    registry = load_registry(folder / "registry.yaml")
    assert [(a.name, a.role) for a in registry] == [("ezra", "orchestrator"),
                                                   ("bezalel", "worker")]
    assert all(registry.soul_path(agent).is_file() for agent in registry)
    secrets_file = folder / "secrets.yaml"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    secrets = load_secrets(secrets_file)
    assert set(secrets.private_keys()) == {"ezra", "bezalel", "operator", "receiver"}
    tokens = [secrets.fleet["FLEET_WEBHOOK_SECRET"], secrets.fleet["FLEET_READ_TOKEN"]]
    assert len(set(tokens)) == 2
    assert all(len(value) == 64 and int(value, 16) >= 0 for value in tokens)
    keys = {name: signing_key(name, text) for name, text in secrets.private_keys().items()}
    assert len({key.keyid for key in keys.values()}) == 4  # each its own Ed25519 key
    assert (operator := secrets.operator_key()) is not None
    assert operator.keyid == keys["operator"].keyid
    ezra_env = secrets.for_agent("ezra")  # its own private key, everyone's public keys
    assert ezra_env["FLEET_BUS_PRIVATE_KEY"] == secrets.private_keys()["ezra"]
    assert set(parse_keyring(ezra_env["FLEET_BUS_PUBLIC_KEYS"])) == {
        key.keyid for key in keys.values()}
    assert not {secrets.private_keys()[name] for name in ("bezalel", "operator", "receiver")} & {
        *ezra_env.values()}
    assert "Next:\n  1. edit registry.yaml" in done.output
    assert f"export FLEET_SECRETS={secrets_file.resolve()}" in done.output


def test_default_agents(folder: Path) -> None:
    assert run(folder).exit_code == 0
    assert list(load_registry(folder / "registry.yaml").agents) == [
        "orchestrator", "worker-1", "worker-2"]


def test_never_overwrites_and_writes_nothing_then(folder: Path) -> None:
    (folder / "secrets.yaml").write_text("mine\n")
    done = run(folder)
    assert done.exit_code == 1
    assert done.output == ("Error: secrets.yaml already exists; fleet init never overwrites a "
                           "file\nHint: Move it away, or pass other paths (--registry, "
                           "--secrets).\n")
    assert (folder / "secrets.yaml").read_text() == "mine\n"
    assert not (folder / "registry.yaml").exists() and not (folder / "souls").exists()


def test_secrets_only_takes_the_registrys_agents(folder: Path) -> None:
    assert run(folder, "a", "b", "c").exit_code == 0
    done = run(folder, "--secrets-only", "--secrets", "lab-secrets.yaml")
    assert done.exit_code == 0, done.output
    data = yaml.safe_load((folder / "lab-secrets.yaml").read_text())
    assert list(data["agents"]) == ["a", "b", "c"]
    assert stat.S_IMODE((folder / "lab-secrets.yaml").stat().st_mode) == 0o600
    again = run(folder, "--secrets-only", "--secrets", "lab-secrets.yaml")
    assert again.exit_code == 1
    assert again.output.startswith("Error: lab-secrets.yaml already exists;")


def test_bad_agent_name_is_refused(folder: Path) -> None:
    done = run(folder, "Ezra")
    assert done.exit_code == 1
    assert done.output.splitlines()[0] == (
        "Error: 'Ezra' is not an agent name (1-31 characters of lowercase letters, digits and "
        "'-', starting with a letter)")
    assert not (folder / "registry.yaml").exists()
