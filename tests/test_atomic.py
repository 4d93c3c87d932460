"""One atomic write (fleet/core/atomic.py): temp file in the same dir with its mode set before any
content, fsync of the file, rename, fsync of the dir; every writer of the controller and the
receiver goes through it."""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.core.atomic import publish_dir, replace_atomic, write_atomic

Synced = list[tuple[str, int]]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Synced:
    """Every fsync from now on: (what the descriptor names, its mode bits then)."""
    calls: Synced = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(os.fstat(fd).st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def assert_durable(calls: Synced, path: Path, mode: int) -> None:
    """``path`` was written through a synced temp file of ``mode`` in its dir, then the dir
    was synced after the rename, and it holds ``mode`` now."""
    staged = [(name, bits) for name, bits in calls
              if Path(name).parent == path.parent and Path(name).name.startswith(f".{path.name}.")]
    assert staged and all(bits == mode for _, bits in staged), calls
    assert (str(path.parent), stat.S_IMODE(path.parent.stat().st_mode)) in calls[
        calls.index(staged[-1]) + 1:], calls
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")] == []


def test_write_atomic_sets_the_mode_first_and_syncs(tmp_path: Path, synced: Synced,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: object, **kwargs: object) -> object:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))  # before any content is written
        return real_fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "fdopen", fdopen)
    secret = tmp_path / "secrets.yaml"
    secret.write_text("old\n")
    secret.chmod(0o644)
    write_atomic(secret, "new\n", mode=0o600)
    assert secret.read_text() == "new\n" and seen == [0o600]
    assert_durable(synced, secret, 0o600)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("old\n")

    def broken(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="I/O error"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "known_hosts"]


def test_replace_atomic_syncs_the_file_then_the_dir(tmp_path: Path, synced: Synced) -> None:
    partial, dest = tmp_path / ".release.tar.gz.42", tmp_path / "release.tar.gz"
    partial.write_bytes(b"tar")
    replace_atomic(partial, dest)
    assert dest.read_bytes() == b"tar" and not partial.exists()
    assert [name for name, _ in synced] == [str(partial), str(tmp_path)]


def run_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from fleet.control.records import update_run

    monkeypatch.setenv("FLEET_RECORDS_DIR", str(tmp_path))
    update_run("20261205T091500Z-abcdef", status="ok")
    return tmp_path / "20261205T091500Z-abcdef.json"


def known_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from fleet.control.hosts import _write

    _write(tmp_path / "known_hosts", "203.0.113.10 ssh-ed25519 AAAA\n")
    return tmp_path / "known_hosts"


def salvaged_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from fleet.core.masking import Masker
    from fleet.webhook.logcopy import salvage

    raw = tmp_path / "run-1.log.unmasked"
    raw.write_text("token s3cr3t-value-0123456789\n")
    log = salvage(raw, Masker(["s3cr3t-value-0123456789"]))
    assert log.read_text() == "token ***\n" and not raw.exists()
    return log


@pytest.mark.parametrize(("write", "mode"), [(run_record, 0o600), (known_hosts, 0o644),
                                             (salvaged_log, 0o600)])
def test_every_writer_writes_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     synced: Synced,
                                     write: Callable[[Path, pytest.MonkeyPatch], Path],
                                     mode: int) -> None:
    assert_durable(synced, write(tmp_path, monkeypatch), mode)


def test_a_built_directory_is_published_after_a_sync_and_its_parent_synced(
        tmp_path: Path, synced: Synced, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(os, "sync", lambda: order.append("sync"))
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (order.append("rename"), real_rename(a, b)))
    staged, target = tmp_path / ".cache-x", tmp_path / "cache"
    staged.mkdir()
    (staged / "file").write_text("built")
    assert publish_dir(staged, target)
    assert order == ["sync", "rename"] and (target / "file").read_text() == "built"
    assert synced[-1][0] == str(tmp_path)
    again = tmp_path / ".cache-y"
    again.mkdir()
    (again / "other").write_text("late")
    assert not publish_dir(again, target)  # another build finished first
    assert again.is_dir() and not (target / "other").exists()


# nodectl: stdlib-only, its own synced switch
OWNERS = {"fleet/core/atomic.py", "fleet/node/nodectl.py"}


def renames(tree: ast.AST) -> list[int]:
    """Lines that move a file into place: ``os.rename``/``os.replace``/``shutil.move``, a
    ``Path.rename(target)``, or a one-argument ``.replace(target)`` (``str.replace`` takes
    two, ``datetime.replace`` keywords)."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = node.func.attr
        if ((owner, name) in {("os", "rename"), ("os", "replace"), ("shutil", "move")}
                or (owner != "os" and name == "rename")
                or (owner != "os" and name == "replace" and len(node.args) == 1
                    and not node.keywords)):
            found.append(node.lineno)
    return found


def test_every_rename_into_place_goes_through_the_one_atomic_module() -> None:
    repo = Path(__file__).resolve().parent.parent
    found = [f"{path.relative_to(repo)}:{line}"
             for package in ("fleet", "bus", "deploys")
             for path in sorted((repo / package).rglob("*.py"))
             if str(path.relative_to(repo)) not in OWNERS
             for line in renames(ast.parse(path.read_text()))]
    assert found == []
    assert renames(ast.parse("import os\nos.replace(a, b)\np.rename(q)\nx.replace(y)\n"
                             "s.replace('a', 'b')\nd.replace(tzinfo=None)\n")) == [2, 3, 4]
