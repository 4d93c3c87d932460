"""One SSH settings builder (``fleet.control.hosts.ssh_settings``) for deploy, status and
``fleet test``; a changed host key seen by status each run (in the keys the node serves,
read over the probe's own connection; a real node's regenerated key in
``tests/deploy/test_hardening_lab.py``);
``fleet test`` without pytest-testinfra says once what is missing."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control import livetest
from fleet.control.hosts import HostKey, changed_host_key
from fleet.control.inventory import host_data
from fleet.control.status import ssh_command
from fleet.core.registry import load_registry
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


OTHER_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIFZnV2ZkN0ZlQ2hhbmdlZEtleUZvclRlc3RzMDAwMDA"


def test_a_changed_host_key_is_found_in_the_keys_the_node_serves(tmp_path: Path) -> None:
    registry = load_registry(registry_file(tmp_path, "known_hosts"))
    beta = registry.get("beta")
    pinned = [HostKey("beta", "[192.0.2.11]:2222", "ssh-ed25519", KEYS["b"]),
              HostKey("beta", "[192.0.2.11]:2222", "ssh-rsa", KEYS["a"])]
    served = f"ssh-ed25519 {KEYS['b']} root@beta\necdsa-sha2-nistp256 {OTHER_KEY} root@beta\n"
    assert changed_host_key(beta, pinned, served) is None
    changed = changed_host_key(beta, pinned, f"ssh-ed25519 {KEYS['a']} root@beta\n")
    assert changed is not None
    assert (changed.agent, changed.pattern, changed.key_type, changed.fingerprint) == (
        "beta", "[192.0.2.11]:2222", "ssh-ed25519", fingerprint(KEYS["a"]))
    # sharing no type with the pinned ones: the first type it serves is named
    other = changed_host_key(beta, pinned[:1], f"ssh-rsa {OTHER_KEY}\n")
    assert other is not None and (other.key_type, other.key) == ("ssh-rsa", OTHER_KEY)
    # nothing readable served (no .pub files, garbage) or nothing pinned: not judged here
    assert changed_host_key(beta, pinned, "") is None
    assert changed_host_key(beta, pinned, "ssh-ed25519 not;base64\n\x00\n") is None
    assert changed_host_key(beta, [], served) is None


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


def test_ssh_options_are_written_in_one_place() -> None:
    """Every OpenSSH option naming how host keys are checked is written by
    :class:`fleet.control.hosts.SshSettings`: the deploy, status, ``fleet test``, the lab and
    the benches (bench/floor.py, the Ansible inventory) take theirs from it."""
    root = Path(__file__).resolve().parents[2]
    writers = sorted(str(path.relative_to(root)) for folder in ("fleet", "deploys", "bench",
                                                               "scripts")
                     for path in (root / folder).rglob("*")
                     if path.is_file() and path.suffix in (".py", ".j2", "", ".sh")
                     and "StrictHostKeyChecking" in path.read_text(errors="replace"))
    assert writers == ["fleet/control/hosts.py"]
