"""Values that reach a root shell on a node are matched in full and quoted: release ids (the
controller's check, the rollback phase's and fleet-nodectl's own), the verify/rollback
command line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyinfra.api import DeployError

from deploys import rollback
from deploys.verify import nodectl_command
from fleet.control.release import check_release_id
from fleet.core.release_marker import Broken
from fleet.core.validate import ValidationError, check_user_name
from fleet.node import nodectl

FORM = ("12 hex digits, optionally -dirty-<8 hex digits>, or nogit-<12 hex digits>; then "
        "optionally -broken or -broken-exit")
BAD_IDS = ["x;touch /tmp/pwned;#", "../../etc", "444a224b3f00\n", "444a224b3f00/..",
           "444A224B3F00", "444a224b3f0", "444a224b3f00-dirty-1234567", "", "-broken",
           "444a224b3f00-exit", "444a224b3f00-broken-exit-broken"]
GOOD_IDS = ["444a224b3f00", "444a224b3f00-dirty-0123abcd", "444a224b3f00-broken",
            "444a224b3f00-dirty-0123abcd-broken", "nogit-0123456789ab",
            "444a224b3f00-broken-exit"]


@pytest.mark.parametrize("value", BAD_IDS)
def test_check_release_id_refuses_anything_but_a_release_id(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_release_id(value)
    assert str(caught.value) == f"{value!r} is not a release id ({FORM})"
    assert caught.value.hint == ("Pass a release id as `fleet status` or the run records show "
                                 "it, e.g. --to 444a224b3f00.")


@pytest.mark.parametrize("value", GOOD_IDS)
def test_check_release_id_accepts_release_ids(value: str) -> None:
    assert check_release_id(value) == value


def test_check_user_name() -> None:
    assert check_user_name("deploy") == "deploy"
    with pytest.raises(ValidationError, match=r"^'root\\n' is not a user name \(1-32 "):
        check_user_name("root\n")


def test_release_ids_built_here_pass_the_check(tmp_path: Path) -> None:
    """Every shape release_id builds: this checkout's (a commit, maybe dirty), one without
    git, and each with the broken suffixes."""
    from fleet.control.release import release_id
    built = [release_id(root, broken) for root in (Path(__file__).parents[2], tmp_path)
             for broken in Broken]
    assert [check_release_id(value) for value in built] == built
    assert built[3].startswith("nogit-") and built[4:] == [built[3] + "-broken",
                                                           built[3] + "-broken-exit"]


def test_rollback_phase_refuses_a_bad_target_before_any_operation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    called = []
    monkeypatch.setattr(rollback, "agent_verified", lambda **kwargs: called.append(kwargs))
    phase = rollback.run.__wrapped__  # type: ignore[attr-defined]  # without pyinfra's @deploy
    with pytest.raises(DeployError) as caught:
        phase(SimpleNamespace(), SimpleNamespace(stale_lock=""), "x;touch /tmp/pwned;#")
    assert str(caught.value) == f"rollback_to: 'x;touch /tmp/pwned;#' is not a release id ({FORM})"
    assert called == []


def test_nodectl_command_quotes_every_argument(tmp_path: Path) -> None:
    """Even a value no check refused stays one argument: the shell runs no second command."""
    marker = tmp_path / "pwned"
    command = nodectl_command("printf", ["%s|", "rollback", "--to", f"x;touch {marker};#"],
                              "ctl:1:run")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True,
                          cwd=tmp_path)
    assert done.stdout == f"rollback|--to|x;touch {marker};#|"
    assert not marker.exists()


@pytest.fixture
def node_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(nodectl, "ROOT", tmp_path)
    monkeypatch.setattr(nodectl, "RELEASES", tmp_path / "releases")
    monkeypatch.setattr(nodectl, "CURRENT", tmp_path / "current")
    monkeypatch.setattr(nodectl, "HISTORY", tmp_path / "history")
    (tmp_path / "releases" / "111111111111" / "site").mkdir(parents=True)
    (tmp_path / "elsewhere" / "site").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["switch", "../elsewhere"],
    ["rollback", "--unit", "u.service", "--port", "1", "--to", "../elsewhere"],
    ["rollback", "--unit", "u.service", "--port", "1", "--to", "x;touch /tmp/pwned;#"],
    ["verify", "--unit", "u.service", "--port", "1", "--release", "../elsewhere"],
])
def test_nodectl_refuses_anything_but_a_release_id(node_root: Path, argv: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        nodectl.main(argv)
    assert caught.value.code == 2
    value = argv[-1]
    assert f"{value!r} is not a release id ({FORM})" in capsys.readouterr().err
    assert not (node_root / "current").exists()


def test_nodectl_switch_refuses_a_path(node_root: Path) -> None:
    with pytest.raises(SystemExit, match=r"^'\.\./elsewhere' is not a release id"):
        nodectl.switch("../elsewhere")
    assert json.loads(json.dumps(nodectl.switch("111111111111")))["changed"] is True


def test_nodectl_switch_and_env_restore_are_synced_to_disk(
        node_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(nodectl.os, "fsync", lambda fd: (
        synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[-1])
    nodectl.switch("111111111111")
    assert synced == [str(node_root / "history"), str(node_root)]
    monkeypatch.setattr(nodectl, "ETC", node_root / "etc")
    (node_root / "etc" / "bezalel").mkdir(parents=True)
    (node_root / "etc" / "bezalel" / "env.previous").write_text('A="1"\n')
    synced.clear()
    assert nodectl.restore_env("bezalel") is True
    assert synced == [str(node_root / "etc" / "bezalel")]
    assert (node_root / "etc" / "bezalel" / "env").read_text() == 'A="1"\n'


def test_nodectl_history_entries_that_are_not_release_ids_are_skipped(node_root: Path) -> None:
    nodectl.switch("111111111111")
    (node_root / "history").write_text("../elsewhere\n111111111111\n")
    assert nodectl.previous_release() is None


def test_agent_unit_has_limits_and_the_sandbox(tmp_path: Path) -> None:
    """The directives that bring `systemd-analyze security` to OK (measured on the lab in
    test_hardening_lab.py), with memory and task limits."""
    from deploys.context import AgentContext
    from deploys.services import unit_text
    from fleet.core.registry import parse_registry

    registry = parse_registry("wizards:\n  a: {host: 192.0.2.1, role: worker, model: m}\n",
                              tmp_path / "registry.yaml")
    ctx = AgentContext(agent=registry.get("a"), registry=registry, soul_source=tmp_path / "s")
    lines = unit_text(ctx).splitlines()
    for directive in ["MemoryMax=1G", "TasksMax=512", "ReadWritePaths=/var/lib/fleet/a",
                      "CapabilityBoundingSet=", "PrivateUsers=yes", "ProtectSystem=strict",
                      "ProtectProc=invisible", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                      "RestrictNamespaces=yes", "SystemCallFilter=@system-service",
                      "SystemCallFilter=~@privileged @resources", "MemoryDenyWriteExecute=yes"]:
        assert directive in lines


def test_sshd_drop_in_sets_only_what_turns_passwords_off() -> None:
    from deploys.baseline import SSHD_SETTINGS

    settings = [line for line in SSHD_SETTINGS.splitlines() if not line.startswith("#")]
    assert settings == ["PasswordAuthentication no", "KbdInteractiveAuthentication no",
                        "PermitEmptyPasswords no"]
