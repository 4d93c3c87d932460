"""Host keys: `fleet hosts scan` records them (a stand-in ssh-keyscan here; the real one on lab
nodes in test_hosts_lab.py); deploys and status refuse hosts whose key is not pinned."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control.hosts import HostKeyError, check_known_hosts, require_known_hosts
from fleet.control.inventory import host_data
from fleet.control.status import probe_fleet
from fleet.core.registry import load_registry

KEYS = {"a": "AAAAC3NzaC1lZDI1NTE5AAAAIDGvq23fWj+sJYCFR+GQIediwANgjEzX6tkvOFvbxqlQ",
        "b": "AAAAC3NzaC1lZDI1NTE5AAAAIDj6jp1sM1r7JSYeaG5mpVQcOg6VTFXwGhm0BK1wWf0Q"}
REGISTRY = """\
{fleet}wizards:
  alpha: {{host: 192.0.2.10, role: orchestrator, model: m}}
  beta: {{host: 192.0.2.11, role: worker, model: m, ssh_port: 2222}}
"""


def fingerprint(key: str) -> str:
    """What `ssh-keygen -lf` prints for a key."""
    digest = hashlib.sha256(base64.b64decode(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@pytest.fixture
def keyscan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `ssh-keyscan` answering with the key in ``keys/<host>`` (none: no answer)."""
    bin_dir, keys = tmp_path / "bin", tmp_path / "keys"
    bin_dir.mkdir()
    keys.mkdir()
    script = bin_dir / "ssh-keyscan"
    script.write_text('#!/bin/sh\nfor host; do :; done\nport=22\n'
                      'while [ $# -gt 1 ]; do [ "$1" = -p ] && port=$2; shift; done\n'
                      f'key={keys}/$host\n'
                      'if [ -f "$key" ]; then name=$host; [ "$port" = 22 ] || '
                      'name="[$host]:$port"; echo "# $host:$port SSH-2.0-OpenSSH_9.2p1" >&2; '
                      'echo "$name ssh-ed25519 $(cat "$key")"; '
                      'else echo "write (${host}): Connection refused" >&2; fi\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return keys


def registry_file(tmp_path: Path, known_hosts: str | None = None) -> Path:
    path = tmp_path / "fleet" / "registry.yaml"
    path.parent.mkdir(exist_ok=True)
    fleet = f"fleet: {{known_hosts: {known_hosts}}}\n" if known_hosts else ""
    path.write_text(REGISTRY.format(fleet=fleet))
    return path


def test_scan_records_keys_beside_the_registry_and_says_to_set_it(tmp_path: Path,
                                                                   keyscan: Path) -> None:
    (keyscan / "192.0.2.10").write_text(KEYS["a"])
    (keyscan / "192.0.2.11").write_text(KEYS["b"])
    registry = registry_file(tmp_path)
    result = CliRunner().invoke(main, ["--registry", str(registry), "hosts", "scan"])
    assert result.exit_code == 0, result.output
    known = registry.parent / "known_hosts"
    assert result.stdout.splitlines() == [
        f"alpha  192.0.2.10  ssh-ed25519  {fingerprint(KEYS['a'])}  (new)",
        f"beta   [192.0.2.11]:2222  ssh-ed25519  {fingerprint(KEYS['b'])}  (new)",
        f"Recorded in {known}. Compare each fingerprint with the server's own (`ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub` on its console).",
        f"The registry sets no known_hosts: add `known_hosts: known_hosts` under `fleet:` in "
        f"{registry}; until then deploy and status refuse to connect."]
    assert known.read_text() == (f"192.0.2.10 ssh-ed25519 {KEYS['a']}\n"
                                 f"[192.0.2.11]:2222 ssh-ed25519 {KEYS['b']}\n")
    assert known.stat().st_mode & 0o777 == 0o644
    listed = subprocess.run(["ssh-keygen", "-lf", str(known)], capture_output=True, text=True,
                            check=True).stdout
    assert fingerprint(KEYS["a"]) in listed and fingerprint(KEYS["b"]) in listed


def test_scan_of_one_agent_replaces_only_its_keys(tmp_path: Path, keyscan: Path) -> None:
    registry = registry_file(tmp_path, "pinned/known_hosts")
    known = registry.parent / "pinned" / "known_hosts"
    known.parent.mkdir()
    salt = os.urandom(20)
    hashed = "|1|{}|{}".format(base64.b64encode(salt).decode(), base64.b64encode(
        hmac.new(salt, b"192.0.2.10", "sha1").digest()).decode())
    known.write_text(f"# operator's note\n{hashed} ssh-ed25519 {KEYS['b']}\n"
                     f"[192.0.2.11]:2222 ssh-ed25519 {KEYS['b']}\nother.example ssh-rsa AAAA\n")
    (keyscan / "192.0.2.10").write_text(KEYS["a"])
    result = CliRunner().invoke(main, ["--registry", str(registry), "hosts", "scan", "alpha"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"alpha  192.0.2.10  ssh-ed25519  {fingerprint(KEYS['a'])}  (changed)")
    assert "The registry sets no known_hosts" not in result.stdout
    assert known.read_text() == (
        f"# operator's note\n[192.0.2.11]:2222 ssh-ed25519 {KEYS['b']}\n"
        f"other.example ssh-rsa AAAA\n192.0.2.10 ssh-ed25519 {KEYS['a']}\n")


def test_scan_names_a_host_that_does_not_answer(tmp_path: Path, keyscan: Path) -> None:
    registry = registry_file(tmp_path)
    result = CliRunner().invoke(main, ["--registry", str(registry), "hosts", "scan", "beta"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: beta: no host key from [192.0.2.11]:2222: write (192.0.2.11): Connection refused",
        "Hint: Check that the agent's host and ssh_port are right and sshd runs there, then "
        "scan again."]
    assert not (registry.parent / "known_hosts").exists()


def test_no_known_hosts_in_the_registry_is_refused(tmp_path: Path) -> None:
    registry = load_registry(registry_file(tmp_path))
    with pytest.raises(HostKeyError) as caught:
        require_known_hosts(registry)
    assert str(caught.value) == (f"{registry.path}: fleet.known_hosts is not set, so host keys "
                                 "cannot be checked; refusing to connect to any agent")
    assert caught.value.hint == ("Run `fleet hosts scan`, check the fingerprints it prints, then "
                                 "set `known_hosts: known_hosts` under `fleet:` in the registry.")


def test_an_agent_without_a_pinned_key_is_refused(tmp_path: Path) -> None:
    registry = load_registry(registry_file(tmp_path, "known_hosts"))
    known = registry.path.parent / "known_hosts"
    with pytest.raises(HostKeyError, match=r"known_hosts: known_hosts file \(fleet.known_hosts\) "
                       r"not found$"):
        check_known_hosts(registry)
    known.write_text(f"192.0.2.10 ssh-ed25519 {KEYS['a']}\n")
    assert check_known_hosts(registry, ["alpha"]) == known
    with pytest.raises(HostKeyError) as caught:
        check_known_hosts(registry)
    assert str(caught.value) == f"{known}: no host key pinned for beta ([192.0.2.11]:2222)"
    assert caught.value.hint == (
        "After checking the fingerprint against the server's own (`ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub` on its console), trust it with "
        "`fleet hosts scan beta`.")


def test_inventory_always_checks_host_keys_strictly(tmp_path: Path) -> None:
    unset = load_registry(registry_file(tmp_path))
    data = host_data(unset.get("alpha"), unset)
    assert (data["ssh_known_hosts_file"], data["ssh_strict_host_key_checking"]) == (
        os.devnull, "yes")
    pinned = load_registry(registry_file(tmp_path, "known_hosts"))
    data = host_data(pinned.get("alpha"), pinned)
    assert (data["ssh_known_hosts_file"], data["ssh_strict_host_key_checking"]) == (
        str((pinned.path.parent / "known_hosts").resolve()), "yes")


def test_status_refuses_a_registry_without_known_hosts(tmp_path: Path) -> None:
    registry = registry_file(tmp_path)
    result = CliRunner().invoke(main, ["--registry", str(registry), "status"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {registry}: fleet.known_hosts is not set, so host keys cannot be checked; "
        "refusing to connect to any agent",
        "Hint: Run `fleet hosts scan`, check the fingerprints it prints, then set "
        "`known_hosts: known_hosts` under `fleet:` in the registry."]


def test_status_does_not_log_in_to_an_agent_whose_key_is_not_pinned(tmp_path: Path) -> None:
    registry = load_registry(registry_file(tmp_path, "known_hosts"))
    (registry.path.parent / "known_hosts").write_text(f"192.0.2.10 ssh-ed25519 {KEYS['a']}\n")
    statuses = {status.agent: status for status in probe_fleet(registry, timeout=0.2)}
    assert statuses["beta"].ssh == (
        "host key of [192.0.2.11]:2222 is not pinned: refused; After checking the fingerprint "
        "against the server's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on its "
        "console), trust it with `fleet hosts scan beta`.")
    assert statuses["alpha"].ssh != statuses["beta"].ssh


def test_pyinfra_output_says_how_to_trust_a_host_that_will_be_refused(tmp_path: Path) -> None:
    from fleet.control.inventory import host_key_warnings

    unset = load_registry(registry_file(tmp_path))
    assert host_key_warnings(unset) == [
        f"{unset.path}: fleet.known_hosts is not set, so host keys cannot be checked; refusing "
        "to connect to any agent (Hint: Run `fleet hosts scan`, check the fingerprints it "
        "prints, then set `known_hosts: known_hosts` under `fleet:` in the registry.)"]
    pinned = load_registry(registry_file(tmp_path, "known_hosts"))
    known = pinned.path.parent / "known_hosts"
    known.write_text(f"192.0.2.10 ssh-ed25519 {KEYS['a']}\n")
    assert host_key_warnings(pinned) == [
        f"{known}: no host key pinned for beta ([192.0.2.11]:2222): it will be refused. After "
        "checking the fingerprint against the server's own (`ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub` on its console), trust it with "
        "`fleet hosts scan beta`."]


def test_an_ssh_config_reaches_pyinfra_and_keys_stay_pinned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$FLEET_SSH_CONFIG`` (a bastion's ProxyJump, a benchmark's delay line) becomes
    pyinfra's ``ssh_config_file``; host keys are still checked against the registry's."""
    pinned = load_registry(registry_file(tmp_path, "known_hosts"))
    assert "ssh_config_file" not in host_data(pinned.get("alpha"), pinned)
    config = tmp_path / "ssh_config"
    monkeypatch.setenv("FLEET_SSH_CONFIG", str(config))
    data = host_data(pinned.get("alpha"), pinned)
    assert (data["ssh_config_file"], data["ssh_known_hosts_file"],
            data["ssh_strict_host_key_checking"]) == (
        str(config), str((pinned.path.parent / "known_hosts").resolve()), "yes")
