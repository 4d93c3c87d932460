"""Unit tests (no root): clear errors when the lab cannot run here, names, rootfs cache key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.cli.lab import _lab_after_name
from fleet.core.errors import LabError
from fleet.lab import claims, paths, rootfs
from fleet.lab.prereqs import check_prerequisites, raise_host_limits
from tests.lab_fixtures import EXAMPLE_REGISTRY


def test_not_root_is_refused_with_a_hint() -> None:
    with pytest.raises(LabError) as info:
        check_prerequisites(euid=1000)
    assert str(info.value) == (
        "fleet lab must run as root (running as uid 1000): it creates network namespaces, "
        "a bridge, overlay mounts and systemd-nspawn containers")
    assert info.value.hint == "Run it as root, e.g. `sudo fleet lab up`."


@pytest.mark.parametrize(("tool", "hint"), [
    ("systemd-nspawn", "apt-get install systemd-container"),
    ("debootstrap", "apt-get install debootstrap"),
    ("zstd", "apt-get install zstd"),
])
def test_missing_tool_names_the_package(tool: str, hint: str) -> None:
    with pytest.raises(LabError) as info:
        check_prerequisites(euid=0, which=lambda name: None if name == tool else "/usr/bin/x")
    assert str(info.value) == f"{tool} not found on PATH: the lab needs it"
    assert info.value.hint == hint


def test_cli_prints_the_error_and_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["--registry", str(EXAMPLE_REGISTRY), "lab", "up"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: fleet lab must run as root (running as uid 1000): it creates network "
        "namespaces, a bridge, overlay mounts and systemd-nspawn containers\n"
        "Hint: Run it as root, e.g. `sudo fleet lab up`.\n")


def test_status_and_ssh_of_a_lab_that_is_down(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.LAB_ROOT_ENV, str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(main, ["lab", "status", "--lab", "nope", "--json"]).output == "[]\n"
    assert runner.invoke(main, ["lab", "status"], env={"FLEET_LAB": "idle"}).output == (
        "Lab 'idle' is down.\n")
    result = runner.invoke(main, ["lab", "ssh", "--lab", "nope", "ezra-primary"])
    assert result.exit_code == 1
    assert result.output == (f"Error: lab 'nope' is not up (no nodes in {tmp_path}/nope)\n"
                             "Hint: Start it with `fleet lab up --lab nope`.\n")


def test_bad_lab_name_is_rejected() -> None:
    with pytest.raises(LabError, match=r"lab name 'My Lab' is invalid: use 1-31 lowercase"):
        paths.lab_dir("My Lab")


def test_lab_and_cache_dirs_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.LAB_ROOT_ENV, raising=False)
    monkeypatch.delenv(paths.CACHE_DIR_ENV, raising=False)
    assert paths.lab_dir("x") == Path("/var/lib/sovereign-fleet/labs/x")
    assert paths.cache_dir() == Path("/var/cache/sovereign-fleet")
    monkeypatch.setenv(paths.LAB_ROOT_ENV, "/tmp/labs")
    assert paths.lab_dir("x") == Path("/tmp/labs/x")


def test_rootfs_cache_key_changes_with_the_package_list() -> None:
    key = rootfs.cache_key()
    assert rootfs.cache_key(packages=(*rootfs.PACKAGES, "git")) != key
    assert rootfs.cache_key(suite="trixie") != key
    assert rootfs.cache_key(packages=tuple(reversed(rootfs.PACKAGES))) == key
    assert {"python3", "python3-venv", "openssh-server", "systemd"} <= set(rootfs.PACKAGES)


def test_a_rebuild_keeps_only_the_package_files_it_used(tmp_path: Path) -> None:
    debs, used = tmp_path / "debs-bookworm", tmp_path / "archives"
    for folder, names in ((debs, ["a_1_amd64.deb", "b_1_amd64.deb", "notes"]),
                          (used, ["a_1_amd64.deb", "b_2_amd64.deb"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_text(name)
    rootfs.prune_debs(debs, tmp_path / "empty")  # nothing to tell old from new by
    assert len(list(debs.iterdir())) == 3
    rootfs.prune_debs(debs, used)
    assert sorted(path.name for path in debs.iterdir()) == ["a_1_amd64.deb", "notes"]


def test_mirror_comes_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n")
    assert rootfs.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "debian.sources").unlink()
    (tmp_path / "old.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert rootfs.debian_mirror(tmp_path) == "http://old.example/debian"
    (tmp_path / "old.list").unlink()
    assert rootfs.debian_mirror(tmp_path) == rootfs.DEFAULT_MIRROR


def test_host_limits_are_raised_never_lowered(tmp_path: Path) -> None:
    (tmp_path / "fs/inotify").mkdir(parents=True)
    (tmp_path / "fs/inotify/max_user_instances").write_text("128\n")
    (tmp_path / "fs/inotify/max_user_watches").write_text("999999\n")
    assert raise_host_limits(tmp_path) == {"fs.inotify.max_user_instances": 8192}
    assert (tmp_path / "fs/inotify/max_user_instances").read_text() == "8192\n"
    assert (tmp_path / "fs/inotify/max_user_watches").read_text() == "999999\n"
    assert raise_host_limits(tmp_path) == {}


def test_a_claimed_lab_is_in_use_until_released(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.LAB_ROOT_ENV, str(tmp_path))
    assert not claims.in_use("x")
    first = claims.claim("x")
    assert first is not None
    assert claims.claim("x") is None
    assert claims.in_use("x")
    first.release()
    assert not claims.in_use("x")
    again = claims.claim("x")
    assert again is not None
    again.release()


@pytest.mark.parametrize(("args", "expected"), [
    ((), ("default", ())),
    (("ls", "-l"), ("default", ("ls", "-l"))),
    (("--lab", "x", "ls"), ("x", ("ls",))),
    (("--lab=y", "--", "ls", "--lab"), ("y", ("ls", "--lab"))),
    (("--", "--lab", "z"), ("default", ("--lab", "z"))),
])
def test_ssh_takes_lab_after_the_node_name(args: tuple[str, ...],
                                           expected: tuple[str, tuple[str, ...]]) -> None:
    assert _lab_after_name("default", args) == expected
