"""One SSH settings builder (``fleet.hosts.ssh_settings``) for deploy, status and
``fleet test``; a changed host key seen by status each run (one ``ssh-keyscan`` for all hosts,
a stand-in here; a real node's regenerated key in ``tests/deploy/test_hardening_lab.py``);
``fleet test`` without pytest-testinfra says once what is missing."""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet import livetest
from fleet.cli import main
from fleet.hosts import changed_host_keys
from fleet.inventory import host_data
from fleet.registry import load_registry
from fleet.status import ssh_command
from tests.hosts.test_hosts import KEYS, fingerprint, registry_file


def test_deploy_status_and_fleet_test_check_host_keys_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative known_hosts is the registry folder's, not ours
    registry = load_registry(registry_file(tmp_path, "known_hosts"))
    agent = registry.get("beta")
    pinned = str((registry.path.parent / "known_hosts").resolve())
    wanted = {"StrictHostKeyChecking=yes", f"UserKnownHostsFile={pinned}",
              "GlobalKnownHostsFile=/dev/null", "BatchMode=yes", "UpdateHostKeys=no"}

    def options(argv: list[str]) -> set[str]:
        return {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-o"}

    status = ssh_command(agent, registry, 2.0)
    assert wanted <= options(status) and status[status.index("-p") + 1] == "2222"
    spec, kwargs = livetest.testinfra_target(agent, registry)
    assert spec == "ssh://root@192.0.2.11:2222"
    assert wanted <= options(shlex.split(kwargs["ssh_extra_args"]))
    data = host_data(agent, registry)
    assert (data["ssh_known_hosts_file"], data["ssh_strict_host_key_checking"],
            data["ssh_port"]) == (pinned, "yes", 2222)


@pytest.fixture
def scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A stand-in ``ssh-keyscan`` for many hosts at once: the key in ``keys/<host>``; each
    call appended to ``calls``."""
    bin_dir, keys, calls = tmp_path / "bin", tmp_path / "keys", tmp_path / "calls"
    bin_dir.mkdir()
    keys.mkdir()
    script = bin_dir / "ssh-keyscan"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nport=22\n'
                      'while [ $# -gt 0 ]; do case "$1" in -p) port=$2; shift 2;; '
                      '-T|-t) shift 2;; *) break;; esac; done\n'
                      f'for host; do [ -f {keys}/$host ] || continue; name=$host; '
                      '[ "$port" = 22 ] || name="[$host]:$port"; '
                      f'echo "$name ssh-ed25519 $(cat {keys}/$host)"; done\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return keys, calls


def test_a_changed_host_key_is_found_with_one_scan_per_port(
        tmp_path: Path, scans: tuple[Path, Path]) -> None:
    keys, calls = scans
    registry = load_registry(registry_file(tmp_path, "known_hosts"))
    known = registry.path.parent / "known_hosts"
    known.write_text(f"192.0.2.10 ssh-ed25519 {KEYS['a']}\n"
                     f"[192.0.2.11]:2222 ssh-ed25519 {KEYS['b']}\n")
    (keys / "192.0.2.10").write_text(KEYS["a"])
    (keys / "192.0.2.11").write_text(KEYS["a"])  # beta's host now offers another key
    changed = changed_host_keys(known, list(registry), timeout=1)
    assert list(changed) == ["beta"]
    assert (changed["beta"].key_type, changed["beta"].fingerprint) == (
        "ssh-ed25519", fingerprint(KEYS["a"]))
    assert sorted(calls.read_text().splitlines()) == [
        "-T 1 -p 22 -t ssh-ed25519 192.0.2.10", "-T 1 -p 2222 -t ssh-ed25519 192.0.2.11"]
    (keys / "192.0.2.11").unlink()  # no answer: not judged here (the SSH probe says why)
    assert changed_host_keys(known, list(registry), timeout=1) == {}


def test_fleet_test_without_testinfra_says_once_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tests" / "live").mkdir(parents=True)
    for name in ("inventory.py", "deploy.py"):
        (tmp_path / name).write_text("")
    registry = registry_file(tmp_path, "known_hosts")
    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(livetest.importlib.util, "find_spec",
                        lambda name, *args: None if name == "testinfra" else real(name, *args))
    result = CliRunner().invoke(main, ["--registry", str(registry), "test"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: pytest-testinfra is not installed in {livetest.sys.executable}: fleet test "
        "runs the live checks with them",
        f"Hint: Install it: {livetest.sys.executable} -m pip install pytest-testinfra (or: pip "
        "install -e '.[test]' in the fleet repository)"]
    assert "no report" not in result.output
