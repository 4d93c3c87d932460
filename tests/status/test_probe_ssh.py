"""The status probe's SSH connections: a cheap key exchange ahead of the client's default list
(only names this ``ssh`` knows; a stand-in ``ssh`` here, the real client on the lab in
test_status_lab.py), on masters of their own, host keys checked exactly as everywhere else."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.control.hosts import pinned_keys
from fleet.control.status import PROBE_KEX, probe_kex, ssh_command
from fleet.core.registry import Registry, load_registry
from tests.hosts.test_hosts import KEYS, registry_file

DEFAULT_KEX = ["sntrup761x25519-sha512@openssh.com", "ecdh-sha2-nistp256",
               "diffie-hellman-group14-sha256"]


@pytest.fixture(autouse=True)
def asked_anew() -> Iterator[None]:
    """``probe_kex`` asks the client once per process: once per test here."""
    probe_kex.cache_clear()
    yield
    probe_kex.cache_clear()


def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kex: list[str],
             status: int = 0) -> None:
    """An ``ssh`` first on PATH that answers ``-Q kex`` with ``kex`` and exits ``status``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "ssh"
    script.write_text("#!/bin/sh\n[ \"$1 $2\" = '-Q kex' ] || exit 2\n"
                      + "".join(f"echo {name}\n" for name in kex) + f"exit {status}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def options(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv[:-1]) if arg == "-o")


def lab_like(tmp_path: Path) -> Registry:
    return load_registry(registry_file(tmp_path, "known_hosts"))


def test_the_probe_puts_the_cheap_key_exchanges_its_client_knows_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh(tmp_path, monkeypatch, ["mlkem768x25519-sha256", "curve25519-sha256",
                                     "curve25519-sha256@libssh.org", *DEFAULT_KEX])
    assert probe_kex() == ("^mlkem768x25519-sha256,curve25519-sha256,"
                           "curve25519-sha256@libssh.org")
    probe_kex.cache_clear()
    fake_ssh(tmp_path / "older", monkeypatch, ["curve25519-sha256", *DEFAULT_KEX])
    assert probe_kex() == "^curve25519-sha256"  # never a name the client would refuse


@pytest.mark.parametrize(("kex", "status"), [(DEFAULT_KEX, 0), (PROBE_KEX, 1)])
def test_a_client_that_knows_none_or_cannot_say_keeps_its_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kex: list[str], status: int) -> None:
    fake_ssh(tmp_path, monkeypatch, list(kex), status)
    assert probe_kex() is None
    command = ssh_command(lab_like(tmp_path).get("beta"), lab_like(tmp_path), 2.0, probe=True)
    assert "KexAlgorithms" not in options(command)


def test_the_probe_rides_masters_of_its_own_with_host_keys_pinned_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh(tmp_path, monkeypatch, ["curve25519-sha256", *DEFAULT_KEX])
    monkeypatch.setenv("FLEET_SSH_CONTROL_DIR", str(tmp_path / "control"))
    registry = lab_like(tmp_path)
    probe = options(ssh_command(registry.get("beta"), registry, 2.0, probe=True))
    other = options(ssh_command(registry.get("beta"), registry, 2.0))  # state, sealed, ...
    assert probe.pop("KexAlgorithms") == "^curve25519-sha256"
    assert "KexAlgorithms" not in other  # what else reaches a node keeps the default
    assert (probe.pop("ControlPath"), other.pop("ControlPath")) == (
        f"{tmp_path}/control/probe-%C", f"{tmp_path}/control/%C")
    assert probe == other
    assert probe["StrictHostKeyChecking"] == "yes"


def test_the_real_client_is_asked_for_names_it_knows() -> None:
    known = subprocess.run(["ssh", "-Q", "kex"], capture_output=True, text=True,
                           check=True).stdout.split()
    chosen = probe_kex()
    assert chosen is not None and chosen.startswith("^")  # OpenSSH >= 6.5 has curve25519
    names = chosen[1:].split(",")
    assert set(names) <= set(known) & set(PROBE_KEX)
    assert names == [name for name in PROBE_KEX if name in names]  # in PROBE_KEX's order


def test_known_hosts_is_read_once_for_every_agent(tmp_path: Path) -> None:
    registry = lab_like(tmp_path)
    known = registry.path.parent / "known_hosts"
    known.write_text(f"192.0.2.10 ssh-ed25519 {KEYS['a']}\n"
                     f"[192.0.2.11]:2222 ssh-ed25519 {KEYS['b']}\n"
                     f"192.0.2.10 ssh-rsa {KEYS['b']}\n")
    found = pinned_keys(known, list(registry))
    assert {name: [(key.pattern, key.key_type, key.key) for key in keys]
            for name, keys in found.items()} == {
        "alpha": [("192.0.2.10", "ssh-ed25519", KEYS["a"]), ("192.0.2.10", "ssh-rsa", KEYS["b"])],
        "beta": [("[192.0.2.11]:2222", "ssh-ed25519", KEYS["b"])]}
    known.unlink()
    assert pinned_keys(known, list(registry)) == {"alpha": [], "beta": []}
