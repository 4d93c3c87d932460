"""``fleet state``: the controller's half, with the node played by a local ``fleet-nodectl``
process on a temporary root (what the SSH command would run there)."""

from __future__ import annotations

import io
import json
import shlex
import sqlite3
import stat
import sys
import tarfile
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.control import state
from fleet.core.errors import StateError
from fleet.core.registry import Registry, parse_registry
from fleet.node import nodectl

REGISTRY = """\
fleet:
  become: sudo
wizards:
  bezalel:
    host: 192.0.2.20
    role: worker
    model: m
    ssh_user: deploy
  allegro:
    host: 192.0.2.21
    role: worker
    model: m
"""


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    (tmp_path / "souls").mkdir()
    for name in ("bezalel", "allegro"):
        (tmp_path / "souls" / f"{name}.md").write_text("soul\n")
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return parse_registry(REGISTRY, path)


def test_nodectl_runs_through_sudo_when_the_login_user_is_not_root(registry: Registry) -> None:
    argv = state.remote(registry.get("bezalel"), registry, ["state", "list", "--agent",
                                                            "bezalel"])
    assert argv[0] == "ssh" and "StrictHostKeyChecking=yes" in argv
    assert argv[-1] == ("sudo -n /opt/fleet/bin/fleet-nodectl state list --agent bezalel")
    as_root = state.remote(registry.get("allegro"), registry, ["state", "list", "--agent",
                                                               "allegro"])
    assert as_root[-1] == "/opt/fleet/bin/fleet-nodectl state list --agent allegro"


@pytest.fixture
def local_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The node's fleet-nodectl run here, on ``tmp_path/node``, for what SSH would run."""
    root = tmp_path / "node"
    (root / "state" / "bezalel").mkdir(parents=True)
    (root / "state" / "bezalel" / "memory.txt").write_text("remembered\n")
    with closing(sqlite3.connect(root / "state" / "bezalel" / "bus.db")) as db:
        db.execute("CREATE TABLE inbox (id TEXT)")
        db.execute("INSERT INTO inbox VALUES ('m1')")
        db.commit()
    monkeypatch.setenv("FLEET_STATE_ROOT", str(root / "state"))
    monkeypatch.setenv("FLEET_SNAPSHOTS", str(root / "snapshots"))

    def remote(agent: object, registry: object, args: list[str]) -> list[str]:
        command = shlex.join([sys.executable, "-IS", nodectl.__file__, *args])
        return ["sh", "-c", command]

    monkeypatch.setattr(state, "remote", remote)
    return root


def test_backup_pulls_a_0600_file_checked_against_its_manifest(
        registry: Registry, local_node: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--registry", str(registry.path), "state", "backup",
                                       "bezalel", "--to", str(tmp_path / "backups")])
    assert result.exit_code == 0, result.output
    (backup,) = (tmp_path / "backups").glob("bezalel-*.tar")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    ident = backup.name.removeprefix("bezalel-").removesuffix(".tar")
    assert result.output.startswith(f"{backup}: snapshot {ident}, 2 files checked (sha256 ")
    manifest = state.check_backup(backup)
    assert {entry["path"] for entry in manifest["files"]} == {".", "memory.txt", "bus.db"}
    listed = CliRunner().invoke(main, ["--registry", str(registry.path), "state", "list",
                                       "bezalel"])
    assert listed.exit_code == 0 and listed.output.startswith(f"{ident}  "), listed.output


def test_a_damaged_backup_is_refused_before_it_reaches_the_node(
        registry: Registry, local_node: Path, tmp_path: Path) -> None:
    done = state.backup(registry.get("bezalel"), registry, tmp_path)
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(done.path) as source, tarfile.open(damaged, "w") as tar:
        for member in source:
            handle = source.extractfile(member) if member.isfile() else None
            data = handle.read() if handle else b""
            if member.name == "data/memory.txt":
                data = b"REMEMBERED\n"  # same size, other bytes
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    with pytest.raises(StateError, match=r"is damaged: memory\.txt does not match its sha256"):
        state.restore(registry.get("bezalel"), registry, from_file=damaged)
    assert len(json.loads(nodectl_list(local_node))) == 1  # nothing imported


def nodectl_list(root: Path) -> str:
    import subprocess

    return subprocess.run([sys.executable, "-IS", nodectl.__file__, "state", "list",
                           "--agent", "bezalel"], capture_output=True, text=True,
                          check=True).stdout


def test_restore_needs_a_snapshot_or_a_file_and_refuses_a_bad_id(registry: Registry) -> None:
    result = CliRunner().invoke(main, ["--registry", str(registry.path), "state", "restore",
                                       "bezalel"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "Error: name either a snapshot (--snapshot ID) or a backup file (--from FILE), not "
        "both or neither")
    result = CliRunner().invoke(main, ["--registry", str(registry.path), "state", "restore",
                                       "bezalel", "--snapshot", "../x"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "Error: '../x' is not a snapshot id (YYYYMMDDTHHMMSS then 6 digits of microseconds "
        "and Z)")


def test_a_node_refusal_is_one_line_with_a_hint(registry: Registry, local_node: Path) -> None:
    with pytest.raises(StateError) as caught:
        state.restore(registry.get("bezalel"), registry, "20261206T230000000000Z")
    assert str(caught.value) == (
        "bezalel: fleet-nodectl state restore failed: fleet-nodectl state: agent bezalel has "
        "no snapshot 20261206T230000000000Z (see `fleet-nodectl state list --agent bezalel`)")


@pytest.mark.parametrize("command", ["list", "backup", "restore"])
def test_every_state_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, ["state", command, "--help"])
    assert result.exit_code == 0
    assert len(result.output.split("Options:")[0].strip().splitlines()) >= 3


@pytest.mark.parametrize("code,stderr,args,reason,hint", [
    (1, "fleet-nodectl state: agent bezalel has no snapshot X", ["state", "restore"],
     "fleet-nodectl state: agent bezalel has no snapshot X",
     "The node changed nothing; see `fleet state list bezalel`."),
    (255, "Connection to 192.0.2.20 closed by remote host.", ["state", "restore"],
     "the SSH connection failed or was cut (exit status 255)",
     "The agent may have been left stopped: check `fleet status` and run the restore again "
     "(`fleet state list bezalel`)."),
    (255, "", ["state", "list"], "the SSH connection failed or was cut (exit status 255)",
     "Check that SSH reaches the node (`fleet hosts scan`, `fleet status`)."),
    (127, "sh: 1: /opt/fleet/bin/fleet-nodectl: not found", ["state", "list"],
     "fleet-nodectl is not on the node", "Deploy the agent first (`fleet deploy --limit "
     "bezalel`)."),
])
def test_a_failed_node_command_says_what_happened_and_what_to_do(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, code: int, stderr: str,
        args: list[str], reason: str, hint: str) -> None:
    """A refusal, a cut connection (the restore's says the agent may be stopped) and a node
    without the helper each get their own reason and hint."""
    monkeypatch.setattr(state, "remote", lambda agent, registry, argv: [
        "sh", "-c", f"echo {shlex.quote(stderr)} >&2; exit {code}"])
    with pytest.raises(StateError) as caught:
        state.run_nodectl(registry.get("bezalel"), registry, [*args, "--agent", "bezalel"])
    assert str(caught.value) == f"bezalel: fleet-nodectl {args[0]} {args[1]} failed: {reason}"
    assert caught.value.hint == hint
