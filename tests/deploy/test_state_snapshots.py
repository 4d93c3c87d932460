"""``fleet-nodectl state``: snapshots of an agent's state dir on a temporary node root.

Paths come from the module's globals (``STATE_ROOT``, ``SNAPSHOTS``), or, for a real
``fleet-nodectl`` process, from ``FLEET_STATE_ROOT`` / ``FLEET_SNAPSHOTS``. Tests run as root
where the lab runs, so owners are real; as another user, chown is left to what it may do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.node import nodectl

NODECTL = Path(nodectl.__file__)
AGENT = "bezalel"


@pytest.fixture
def node_root() -> Iterator[Path]:
    """A folder others may pass through (0711, as /var/lib is): SQLite reads a database as
    the state dir's owner, who must reach it."""
    root = Path(tempfile.mkdtemp(prefix="fleet-node-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def node(node_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A node root: ``state/bezalel`` (a text file, a live WAL database with an open
    connection, a folder), ``snapshots``. The SQLite reader runs on the system's python3
    when there is one (the test's own may be in a folder only root can enter)."""
    tmp_path = node_root
    if Path("/usr/bin/python3").exists():
        monkeypatch.setattr(nodectl, "PYTHON", "/usr/bin/python3")
    monkeypatch.setattr(nodectl, "STATE_ROOT", tmp_path / "state")
    monkeypatch.setattr(nodectl, "SNAPSHOTS", tmp_path / "snapshots")
    state = tmp_path / "state" / AGENT
    (state / "tools").mkdir(parents=True)
    (state / "runtime.json").write_text('{"state": "ready"}\n')
    (state / "runtime.json").chmod(0o640)
    (state / "tools" / "calls.jsonl").write_text("{}\n")
    db = sqlite3.connect(state / "bus.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE inbox (id TEXT)")
    db.execute("INSERT INTO inbox VALUES ('first')")
    db.commit()  # the connection stays open: the -wal holds the row, the main file may not
    try:
        yield tmp_path
    finally:
        db.close()


def rows(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in db.execute("SELECT id FROM inbox ORDER BY rowid")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_snapshot_copies_files_and_backs_up_live_databases_outside_the_state_dir(
        node: Path) -> None:
    taken = nodectl.take_snapshot(AGENT, 5, "0123456789ab", "fedcba987654")
    ident = taken["snapshot"]["id"]
    folder = node / "snapshots" / AGENT / ident
    assert stat.S_IMODE((node / "snapshots").stat().st_mode) == 0o700
    assert stat.S_IMODE((node / "snapshots" / AGENT).stat().st_mode) == 0o700
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["id"], manifest["release_before"], manifest["release_after"]) == (
        ident, "0123456789ab", "fedcba987654")
    files = {entry["path"]: entry for entry in manifest["files"]}
    assert sorted(files) == [".", "bus.db", "runtime.json", "tools", "tools/calls.jsonl"]
    assert "bus.db-wal" in manifest["skipped"] and "bus.db-shm" in manifest["skipped"]
    assert not (folder / "data" / "bus.db-wal").exists()
    assert files["bus.db"]["sqlite"] and rows(folder / "data" / "bus.db") == ["first"]
    assert files["runtime.json"]["mode"] == "0640"
    for name in ("runtime.json", "tools/calls.jsonl", "bus.db"):
        assert files[name]["sha256"] == sha(folder / "data" / name)
        assert files[name]["size"] == (folder / "data" / name).stat().st_size
    assert nodectl.snapshots(AGENT)[0]["id"] == ident


def owned_by_nobody(state: Path) -> None:
    """As root: the state dir and everything in it owned by uid/gid 65534 (the agent)."""
    if os.geteuid() == 0:
        for path in [state, *state.rglob("*")]:
            os.chown(path, 65534, 65534, follow_symlinks=False)


def test_restore_puts_the_snapshot_back_with_owner_and_mode(node: Path) -> None:
    """Modes as recorded; every entry owned by the agent (here: the state dir's owner, the
    agent's user does not exist on this machine), also one that root owned."""
    state = node / "state" / AGENT
    owned_by_nobody(state)
    if os.geteuid() == 0:
        os.chown(state / "tools" / "calls.jsonl", 0, 0)
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    (state / "runtime.json").write_text("changed")
    (state / "runtime.json").chmod(0o666)
    (state / "new-file").write_text("later")
    with closing(sqlite3.connect(state / "bus.db")) as db:
        db.execute("INSERT INTO inbox VALUES ('later')")
        db.commit()
    nodectl.restore_state(AGENT, ident)
    assert (state / "runtime.json").read_text() == '{"state": "ready"}\n'
    assert stat.S_IMODE((state / "runtime.json").stat().st_mode) == 0o640
    if os.geteuid() == 0:
        assert {(path.stat().st_uid, path.stat().st_gid) for path in [
            state, *state.rglob("*")]} == {(65534, 65534)}
    assert not (state / "new-file").exists()
    assert rows(state / "bus.db") == ["first"]
    assert not list((node / "state").glob(f".{AGENT}.*"))  # nothing left beside it
    assert [manifest["id"] for manifest in nodectl.snapshots(AGENT)] == [ident]  # kept


def test_restore_into_a_wiped_state_dir(node: Path) -> None:
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    import shutil

    shutil.rmtree(node / "state" / AGENT)
    nodectl.restore_state(AGENT, ident)
    assert rows(node / "state" / AGENT / "bus.db") == ["first"]


def test_only_the_newest_n_snapshots_are_kept(node: Path) -> None:
    taken = [nodectl.take_snapshot(AGENT, 3)["snapshot"]["id"] for _ in range(5)]
    assert [manifest["id"] for manifest in nodectl.snapshots(AGENT)] == taken[::-1][:3]
    assert sorted(path.name for path in (node / "snapshots" / AGENT).iterdir()
                  if not path.name.startswith(".")) == sorted(taken[2:])
    removed = nodectl.take_snapshot(AGENT, 1)["removed"]
    assert removed == taken[::-1][:3]


@pytest.mark.parametrize("bad", ["../x", "--x", "bezalel\n", "a" * 32, "", "Bezalel", "a/b",
                                 "."])
def test_agent_names_are_refused_before_they_reach_a_path(
        node: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["state", "list", f"--agent={bad}"],
                 ["state", "snapshot", f"--agent={bad}"],
                 ["state", "export", f"--agent={bad}", "--snapshot=20261206T230000000000Z"]):
        with pytest.raises(SystemExit) as caught:
            nodectl.main(argv)
        assert caught.value.code == 2
        assert f"{bad!r} is not an agent name" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is not an agent name"):
        nodectl.take_snapshot(bad)
    assert not (node / "snapshots").exists()


@pytest.mark.parametrize("bad", ["../x", "--x", "20261206T230000000000Z\n", "1" * 100,
                                 "20261206T230000000000Z/..", ".tmp-20261206T230000000000Z"])
def test_snapshot_ids_are_refused_before_they_reach_a_path(
        node: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        nodectl.main(["state", "restore", f"--agent={AGENT}", f"--snapshot={bad}",
                      "--unit=u.service", "--port=1"])
    assert caught.value.code == 2
    assert f"{bad!r} is not a snapshot id" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is not a snapshot id"):
        nodectl.restore_state(AGENT, bad)


@pytest.mark.parametrize("keep", ["0", "-1", "x", "1001"])
def test_keep_must_be_a_count(node: Path, keep: str) -> None:
    with pytest.raises(SystemExit):
        nodectl.main(["state", "snapshot", f"--agent={AGENT}", f"--keep={keep}"])


def test_symlinks_in_the_state_dir_are_never_followed(node: Path, tmp_path: Path) -> None:
    """A link to a secret outside (a file, a folder) is neither read into a snapshot nor
    written through by a restore."""
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:SECRET-HASH\n")
    state = node / "state" / AGENT
    (state / "shadow").symlink_to(secret)
    (state / "etc").symlink_to(secret.parent)
    (state / "tools" / "db").symlink_to(secret)
    os.link(secret, state / "hardlink")  # what protected_hardlinks=0 would let an agent do
    (state / "bad\nname").write_text("SECRET-HASH")  # no restore would take the name
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    folder = node / "snapshots" / AGENT / ident
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"shadow", "etc", "tools/db", "hardlink", "'bad\\nname'"} <= set(manifest["skipped"])
    copied = b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())
    assert b"SECRET-HASH" not in copied
    (state / "shadow").unlink()
    nodectl.restore_state(AGENT, ident)
    assert not (state / "shadow").exists() and not (state / "etc").exists()
    assert secret.read_text() == "root:SECRET-HASH\n"


def test_a_damaged_database_is_left_out_and_does_not_stop_the_snapshot(node: Path) -> None:
    broken = node / "state" / AGENT / "broken.db"
    broken.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    manifest = nodectl.snapshots(AGENT)[0]
    assert manifest["id"] == ident
    assert [name for name in manifest["skipped"] if name.startswith("broken.db (SQLite: ")]
    assert "bus.db" in {entry["path"] for entry in manifest["files"]}


def test_a_state_dir_that_is_a_symlink_is_refused(node: Path, tmp_path: Path) -> None:
    state = node / "state" / AGENT
    elsewhere = tmp_path / "elsewhere"
    state.rename(elsewhere)
    state.symlink_to(elsewhere)
    with pytest.raises(SystemExit, match="is not a folder"):
        nodectl.take_snapshot(AGENT)
    assert nodectl.snapshots(AGENT) == []


def test_a_tampered_snapshot_is_not_restored(node: Path, tmp_path: Path) -> None:
    """A data file swapped for a symlink, a manifest path leaving the state dir, a changed
    file: each refused, the state dir unchanged."""
    state = node / "state" / AGENT
    before = sha(state / "runtime.json")
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    folder = node / "snapshots" / AGENT / ident
    data = folder / "data" / "runtime.json"
    data.write_text("tampered")
    with pytest.raises(SystemExit, match="does not match its sha256"):
        nodectl.restore_state(AGENT, ident)
    data.unlink()
    data.symlink_to(tmp_path / "outside-file")
    (tmp_path / "outside-file").write_text('{"state": "ready"}\n')
    with pytest.raises(SystemExit, match="cannot be restored"):
        nodectl.restore_state(AGENT, ident)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][1]["path"] = "../escaped"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="is not a path inside the state dir"):
        nodectl.restore_state(AGENT, ident)
    assert not (node / "state" / "escaped").exists()
    assert sha(state / "runtime.json") == before
    assert not list((node / "state").glob(f".{AGENT}.*"))


def export_bytes(ident: str) -> bytes:
    out = io.BytesIO()
    nodectl.export_snapshot(AGENT, ident, out)
    return out.getvalue()


def test_export_then_import_gives_the_same_snapshot(node: Path) -> None:
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    exported = export_bytes(ident)
    imported = nodectl.import_snapshot("allegro", io.BytesIO(exported))
    assert imported["id"] > ident  # a new id of this node's clock
    ours = node / "snapshots" / AGENT / ident / "data"
    theirs = node / "snapshots" / "allegro" / imported["id"] / "data"
    assert {str(p.relative_to(ours)): sha(p) for p in ours.rglob("*") if p.is_file()} == {
        str(p.relative_to(theirs)): sha(p) for p in theirs.rglob("*") if p.is_file()}
    kept = theirs.parent / "manifest.json"
    assert json.loads(kept.read_text())["imported_from"] == ident
    again = nodectl.import_snapshot("allegro", io.BytesIO(exported))  # the same: a no-op
    assert again == imported
    assert nodectl.import_snapshot(AGENT, io.BytesIO(exported))["id"] == ident  # its own
    manifest = json.loads(kept.read_text())  # the node's copy differs now: a new snapshot
    manifest["files"][1]["mode"] = "0700"
    kept.write_text(json.dumps(manifest))
    third = nodectl.import_snapshot("allegro", io.BytesIO(exported))
    assert third["id"] not in (ident, imported["id"])
    assert json.loads(kept.read_text()) == manifest


def tar_with(ident: str, member: tarfile.TarInfo, content: bytes = b"") -> bytes:
    """An export of ``ident`` with one more member."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(export_bytes(ident))) as source, \
            tarfile.open(fileobj=out, mode="w") as tar:
        for item in source:
            tar.addfile(item, source.extractfile(item) if item.isfile() else None)
        tar.addfile(member, io.BytesIO(content) if member.isfile() else None)
    return out.getvalue()


@pytest.mark.parametrize("name,kind", [("data/../../escaped", tarfile.REGTYPE),
                                       ("/etc/escaped", tarfile.REGTYPE),
                                       ("data/link", tarfile.SYMTYPE),
                                       ("data/extra", tarfile.REGTYPE),
                                       ("elsewhere", tarfile.REGTYPE)])
def test_an_import_refuses_anything_but_the_snapshots_own_files(
        node: Path, name: str, kind: bytes) -> None:
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/shadow" if kind == tarfile.SYMTYPE else ""
    member.size = 1 if kind == tarfile.REGTYPE else 0
    with pytest.raises(SystemExit, match="nothing imported"):
        nodectl.import_snapshot("allegro", io.BytesIO(tar_with(ident, member, b"x")))
    assert nodectl.snapshots("allegro") == []
    assert not list((node / "snapshots" / "allegro").glob(".tmp-*"))
    assert not (node / "escaped").exists()


WRITER = """
import sqlite3, sys, itertools
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("PRAGMA journal_mode=" + sys.argv[2])
db.execute("CREATE TABLE IF NOT EXISTS inbox (id TEXT, body BLOB)")
print("ready", flush=True)
for n in itertools.count():
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO inbox VALUES (?, randomblob(2000))", (str(n),))
    if n % 7 == 0:
        db.execute("DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox LIMIT 3)")
    db.execute("COMMIT")
"""


def test_kill_9_during_snapshots_never_leaves_a_corrupt_or_half_snapshot(node: Path) -> None:
    """20 tries: an agent writing its database as fast as it can and a snapshot running
    beside it, one of them (or both) killed with SIGKILL at a random moment. Afterwards the
    live database and every listed snapshot's copy pass ``PRAGMA integrity_check``, every
    listed snapshot matches its manifest, and no half-written one is listed."""
    env = {**os.environ, "FLEET_STATE_ROOT": str(node / "state"),
           "FLEET_SNAPSHOTS": str(node / "snapshots")}
    chance = random.Random(22)
    midway = 0  # snapshots killed while they ran
    for attempt in range(20):
        mode = "WAL" if attempt % 2 == 0 else "DELETE"  # both journal modes, a db each
        live = node / "state" / AGENT / f"store-{mode.lower()}.db"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live), mode],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        time.sleep(0.05)
        folder = node / "snapshots" / AGENT
        earlier = set(folder.glob(".tmp-*"))
        snapshot = subprocess.Popen([sys.executable, "-IS", str(NODECTL), "state", "snapshot",
                                     "--agent", AGENT, "--keep", "50"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30  # until it writes its temporary folder (or is done)
        while snapshot.poll() is None and time.monotonic() < deadline \
                and not set(folder.glob(".tmp-*")) - earlier:
            time.sleep(0.001)
        time.sleep(chance.uniform(0.0, 0.01))
        if attempt % 3 != 1:  # the agent, the snapshot, or both
            writer.send_signal(signal.SIGKILL)
        if attempt % 3 != 0:
            midway += snapshot.poll() is None
            snapshot.send_signal(signal.SIGKILL)
        _, errors = snapshot.communicate(timeout=60)
        if attempt % 3 == 0:  # not killed: it completes
            assert snapshot.returncode == 0, errors
        writer.kill()
        writer.wait()
        writer.stdout.close()
        assert rows_ok(live)
    assert all(rows_ok(node / "state" / AGENT / f"store-{mode}.db") for mode in ("wal", "delete"))
    assert midway >= 1, "no snapshot was killed while it ran"
    listed = nodectl.snapshots(AGENT)
    assert len(listed) >= 7  # every one not killed, maybe more
    for manifest in listed:
        folder = node / "snapshots" / AGENT / manifest["id"]
        nodectl.check_files(folder, manifest)  # every file there, with its sha256
        assert all(rows_ok(folder / "data" / entry["path"]) for entry in manifest["files"]
                   if entry["sqlite"])
    leftovers = [path.name for path in (node / "snapshots" / AGENT).iterdir()
                 if not nodectl.SNAPSHOT_ID_RE.fullmatch(path.name) and path.name != ".lock"]
    assert all(name.startswith(".tmp-") for name in leftovers)  # never listed
    nodectl.take_snapshot(AGENT, 50)  # the next snapshot clears them
    assert [path.name for path in (node / "snapshots" / AGENT).glob(".tmp-*")] == []


def rows_ok(path: Path) -> bool:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return bool(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def test_rollback_with_state_without_a_matching_snapshot_changes_nothing(
        node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No snapshot was taken by the deploy of the current release: refused with the reason,
    before the release, environment or units are touched."""
    monkeypatch.setattr(nodectl, "current_release", lambda: "fedcba987654")
    monkeypatch.setattr(nodectl, "previous_release", lambda: "0123456789ab")
    touched: list[Any] = []
    for name in ("switch", "restart", "restore_env", "stop_units", "start_units"):
        monkeypatch.setattr(nodectl, name, lambda *args, name=name: touched.append(name))
    nodectl.take_snapshot(AGENT, 5, "0123456789ab", "0123456789ab")  # an older deploy's
    outcome = nodectl.rollback("u.service", 1, None, 1.0, with_state=AGENT)
    assert outcome == {"rolled_back": False, "reason": (
        "no state snapshot of bezalel was taken before release fedcba987654 was deployed "
        "(fleet state list bezalel): nothing rolled back")}
    assert touched == []
    ident = nodectl.take_snapshot(AGENT, 5, "0123456789ab", "fedcba987654")["snapshot"]["id"]
    (node / "snapshots" / AGENT / ident / "data" / "runtime.json").write_text("damaged")
    outcome = nodectl.rollback("u.service", 1, None, 1.0, with_state=AGENT)
    assert outcome == {"rolled_back": False, "reason": (
        f"fleet-nodectl state: snapshot {ident}: runtime.json does not match its sha256: "
        "nothing rolled back")}
    assert touched == []


def test_rollback_with_state_restores_the_snapshot_of_the_release_left(
        node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodectl, "current_release", lambda: "fedcba987654")
    monkeypatch.setattr(nodectl, "previous_release", lambda: "0123456789ab")
    done: list[Any] = []
    def switch(release: str) -> nodectl.Switched:
        done.append(("switch", release))
        return {"release": release, "before": "fedcba987654", "changed": True}

    monkeypatch.setattr(nodectl, "switch", switch)
    monkeypatch.setattr(nodectl, "stop_units", lambda *units: done.append(("stop", *units)))
    monkeypatch.setattr(nodectl, "start_units", lambda *units: done.append(("start", *units)))
    monkeypatch.setattr(nodectl, "checked", lambda *args: ([], {"status": "ok"}))
    ident = nodectl.take_snapshot(AGENT, 5, "0123456789ab", "fedcba987654")["snapshot"]["id"]
    state = node / "state" / AGENT
    (state / "runtime.json").write_text("after the deploy")
    outcome = nodectl.rollback("u.service", 1, None, 1.0, "r.service", with_state=AGENT)
    assert outcome["rolled_back"] and outcome["state_restored"] == ident
    assert done == [("switch", "0123456789ab"), ("stop", "u.service", "r.service"),
                    ("start", "u.service", "r.service")]
    assert (state / "runtime.json").read_text() == '{"state": "ready"}\n'


@pytest.fixture
def etc(node: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``/etc/fleet/bezalel`` of the node: the environment a deploy replaced (env.previous,
    the old key) and the one it wrote (env, the new key)."""
    monkeypatch.setattr(nodectl, "ETC", node / "etc")
    folder = node / "etc" / AGENT
    folder.mkdir(parents=True)
    (folder / "env").write_text("FLEET_AGENT=bezalel\nOPENAI_API_KEY=new-key-bad-bad\n")
    (folder / "env.previous").write_text("FLEET_AGENT=bezalel\nOPENAI_API_KEY=old-key-good\n")
    return folder


def test_a_deploys_snapshot_keeps_the_environment_the_release_left_ran_with(
        node: Path, etc: Path) -> None:
    """``--env-before env.previous`` (the deploy replaced it): the old environment is kept,
    root's 0600, with its sha256; it never leaves the node in an export."""
    ident = nodectl.take_snapshot(AGENT, 5, env_before="env.previous")["snapshot"]["id"]
    folder = node / "snapshots" / AGENT / ident
    kept = folder / "env"
    assert kept.read_bytes() == (etc / "env.previous").read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads((folder / "manifest.json").read_text())["env_sha256"] == sha(kept)
    same = nodectl.take_snapshot(AGENT, 5, env_before="env")["snapshot"]["id"]
    assert (node / "snapshots" / AGENT / same / "env").read_bytes() == (etc / "env").read_bytes()
    stream = io.BytesIO()
    nodectl.export_snapshot(AGENT, ident, stream)
    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        names = tar.getnames()
    assert "env" not in names and b"old-key-good" not in stream.getvalue()
    (etc / "env.previous").unlink()  # a first deploy: nothing to keep
    first = nodectl.take_snapshot(AGENT, 5, env_before="env.previous")["snapshot"]["id"]
    assert not (node / "snapshots" / AGENT / first / "env").exists()
    with pytest.raises(SystemExit, match="not an environment file"):
        nodectl.take_snapshot(AGENT, 5, env_before="../../shadow")


def test_rollback_with_state_puts_back_the_environment_kept_with_the_snapshot(
        node: Path, etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bad-key case by hand: a deploy replaced the key and the agent's state changed;
    ``rollback --with-state`` brings back the old key (written before the units start) and
    the old state, and says so."""
    monkeypatch.setattr(nodectl, "current_release", lambda: "fedcba987654")
    monkeypatch.setattr(nodectl, "previous_release", lambda: "0123456789ab")
    monkeypatch.setattr(nodectl, "switch", lambda release: {
        "release": release, "before": "fedcba987654", "changed": True})
    env_at_start: list[str] = []
    monkeypatch.setattr(nodectl, "stop_units", lambda *units: None)
    monkeypatch.setattr(nodectl, "start_units",
                        lambda *units: env_at_start.append((etc / "env").read_text()))
    monkeypatch.setattr(nodectl, "checked", lambda *args: ([], {"status": "ok"}))
    nodectl.take_snapshot(AGENT, 5, "0123456789ab", "fedcba987654", env_before="env.previous")
    (node / "state" / AGENT / "runtime.json").write_text("after the deploy")
    outcome = nodectl.rollback("u.service", 1, None, 1.0, "r.service", with_state=AGENT)
    assert outcome["rolled_back"] and outcome["env_restored"] is True
    assert env_at_start == ["FLEET_AGENT=bezalel\nOPENAI_API_KEY=old-key-good\n"]
    assert stat.S_IMODE((etc / "env").stat().st_mode) == 0o600
    assert (node / "state" / AGENT / "runtime.json").read_text() == '{"state": "ready"}\n'
    assert sorted(path.name for path in etc.iterdir()) == ["env", "env.previous"]  # no temp


def test_a_snapshot_whose_kept_environment_is_damaged_rolls_back_nothing(
        node: Path, etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodectl, "current_release", lambda: "fedcba987654")
    monkeypatch.setattr(nodectl, "previous_release", lambda: "0123456789ab")
    touched: list[str] = []
    for name in ("switch", "restart", "restore_env", "stop_units", "start_units", "put_env"):
        monkeypatch.setattr(nodectl, name, lambda *args, name=name: touched.append(name))
    ident = nodectl.take_snapshot(AGENT, 5, "0123456789ab", "fedcba987654",
                                  env_before="env.previous")["snapshot"]["id"]
    (node / "snapshots" / AGENT / ident / "env").write_text("OPENAI_API_KEY=swapped-in\n")
    outcome = nodectl.rollback("u.service", 1, None, 1.0, with_state=AGENT)
    assert outcome == {"rolled_back": False, "reason": (
        f"fleet-nodectl state: snapshot {ident}: its environment does not match its sha256 "
        "in the manifest (the snapshot is damaged)")}
    assert touched == []


def test_a_database_name_sqlite_would_decode_reads_only_that_file(node: Path) -> None:
    """A file the agent names ``..%2f..%2foutside.db`` (with SQLite's header) is that file:
    SQLite never gets a URI, so root neither reads the database it would name outside the
    state dir nor creates one where it points."""
    outside = node / "outside.db"
    with closing(sqlite3.connect(outside)) as db:
        db.execute("CREATE TABLE inbox (id TEXT)")
        db.execute("INSERT INTO inbox VALUES ('root-only secret')")
        db.commit()
    outside.chmod(0o600)
    state = node / "state" / AGENT
    (state / "..%2f..%2foutside.db").write_bytes(nodectl.SQLITE_HEADER)
    (state / "..%2f..%2fcreated-by-root.db").write_bytes(nodectl.SQLITE_HEADER)
    owned_by_nobody(state)
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    folder = node / "snapshots" / AGENT / ident
    assert not (node / "created-by-root.db").exists()
    copied = b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())
    assert b"root-only secret" not in copied
    skipped = json.loads((folder / "manifest.json").read_text())["skipped"]
    assert any(entry.startswith("..%2f..%2foutside.db (SQLite") for entry in skipped)


@pytest.mark.skipif(os.geteuid() != 0, reason="owners need root")
def test_databases_are_read_as_the_state_dirs_owner_never_as_root(node: Path) -> None:
    """A database in the agent's state dir that the agent itself cannot read (root's, 0600)
    is not read into the snapshot by root either: SQLite runs as the state dir's owner."""
    state = node / "state" / AGENT
    owned_by_nobody(state)
    with closing(sqlite3.connect(state / "roots.db")) as db:
        db.execute("CREATE TABLE t (secret TEXT)")
        db.execute("INSERT INTO t VALUES ('root secret')")
        db.commit()
    (state / "roots.db").chmod(0o600)  # root's
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    folder = node / "snapshots" / AGENT / ident
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "roots.db" not in {entry["path"] for entry in manifest["files"]}
    assert any(entry.startswith("roots.db (SQLite") for entry in manifest["skipped"])
    assert rows(folder / "data" / "bus.db") == ["first"]  # the agent's own: read as it


def crafted(ident: str, edit: Any) -> bytes:
    """An export of ``ident`` whose manifest ``edit`` changed (sha256s kept consistent)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(export_bytes(ident))) as source, \
            tarfile.open(fileobj=out, mode="w") as tar:
        for item in source:
            data = source.extractfile(item).read() if item.isfile() else b""  # type: ignore[union-attr]
            if item.name == "manifest.json":
                manifest = json.loads(data)
                edit(manifest)
                data = json.dumps(manifest).encode()
                item.size = len(data)
            tar.addfile(item, io.BytesIO(data) if item.isfile() else None)
    return out.getvalue()


def test_a_backup_does_not_choose_owners_or_special_modes(node: Path) -> None:
    """A tampered backup asking for a world-writable state dir, a setuid root file and a
    sticky folder: restored owned by the agent, without setuid, setgid, sticky or write for
    group and others."""
    state = node / "state" / AGENT
    owned_by_nobody(state)
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]

    def evil(manifest: dict[str, Any]) -> None:
        for entry in manifest["files"]:
            entry.update(user="root", group="root", uid=0, gid=0)
            entry["mode"] = {"dir": "1777", "file": "6755"}[entry["type"]]
        manifest["files"][0]["mode"] = "0777"

    imported = nodectl.import_snapshot(AGENT, io.BytesIO(crafted(ident, evil)))
    nodectl.restore_state(AGENT, imported["id"])
    modes = {str(path.relative_to(state)): stat.S_IMODE(path.stat().st_mode)
             for path in [state, *state.rglob("*")]}
    assert modes["."] == 0o755 and modes["tools"] == 0o755 and modes["runtime.json"] == 0o755
    assert all(mode & 0o7022 == 0 for mode in modes.values()), modes
    if os.geteuid() == 0:
        assert {(path.stat().st_uid, path.stat().st_gid) for path in [
            state, *state.rglob("*")]} == {(65534, 65534)}


@pytest.mark.parametrize("edit,problem", [
    (lambda m: m["files"][1].update(mode="zz"), "has no valid type and mode"),
    (lambda m: m["files"][1].update(mode="755"), "has no valid type and mode"),
    (lambda m: m["files"].append(dict(m["files"][1])), "listed twice"),
    (lambda m: m["files"].reverse(), "no entry for the state dir itself"),
    (lambda m: m.update(id="99991231T235959999999Z\n"), "no snapshot id"),
    (lambda m: next(e for e in m["files"] if e["type"] == "file").update(size="1"),
     "no valid size and sha256"),
])
def test_an_import_refuses_a_manifest_a_restore_could_not_use(
        node: Path, edit: Any, problem: str) -> None:
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    with pytest.raises(SystemExit, match=problem):
        nodectl.import_snapshot("allegro", io.BytesIO(crafted(ident, edit)))
    assert nodectl.snapshots("allegro") == []


def test_an_imported_far_future_id_neither_sorts_first_nor_escapes_pruning(node: Path) -> None:
    ident = nodectl.take_snapshot(AGENT)["snapshot"]["id"]
    future = nodectl.import_snapshot("allegro", io.BytesIO(crafted(
        ident, lambda m: m.update(id="99991231T235959999999Z"))))
    assert future["id"] < "2100"
    newer = nodectl.take_snapshot("allegro", 1) if (node / "state" / "allegro").mkdir() is None \
        else None
    assert newer is not None and newer["removed"] == [future["id"]]


@pytest.mark.parametrize("members", [
    [("data/x", b"1"), ("data/x", b"2")],  # listed twice
    [("data/missing/x", b"1")],  # its folder never came
    [("data/f", b"1"), ("data/f/x", b"2")],  # a file used as a folder
])
def test_a_malformed_archive_is_refused_in_one_line(
        node: Path, members: list[tuple[str, bytes]]) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        folder = tarfile.TarInfo("data")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, content in members:
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    with pytest.raises(SystemExit, match=r"cannot be placed .*: nothing imported"):
        nodectl.import_snapshot("allegro", io.BytesIO(out.getvalue()))
    assert nodectl.snapshots("allegro") == []


NAMES = st.text(alphabet="abc.%-_\\ \n/", min_size=1, max_size=6)


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A manifest (paths of any shape, any modes and owners) and the files it lists."""
    entries: list[dict[str, Any]] = [{"path": ".", "type": "dir", "mode": draw(MODES)}]
    files: dict[str, bytes] = {}
    for name in draw(st.lists(NAMES, max_size=6)):
        parents = [entry["path"] for entry in entries if entry["type"] == "dir"]
        parent = draw(st.sampled_from(parents))
        path = name if parent == "." else f"{parent}/{name}"
        kind = draw(st.sampled_from(["dir", "file"]))
        entry: dict[str, Any] = {"path": path, "type": kind, "mode": draw(MODES),
                                 "user": "root", "group": "root", "uid": 0, "gid": 0}
        if kind == "file":
            content = draw(st.binary(max_size=8))
            files[path] = content
            entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
        entries.append(entry)
    return {"id": "20261207T000000000000Z", "files": entries}, files


MODES = st.integers(0, 0o7777).map(lambda mode: f"{mode:04o}")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=manifests())
def test_whatever_a_manifest_says_a_rebuild_stays_inside_and_grants_nothing_special(
        node_root: Path, case: tuple[dict[str, Any], dict[str, bytes]]) -> None:
    """Property: every manifest ``manifest_problem`` accepts rebuilds into the new folder
    only, with no setuid, setgid, sticky or group/other write bit and the given owner; every
    other one is refused before anything is written."""
    manifest, files = case
    work = Path(tempfile.mkdtemp(dir=node_root))
    try:
        data = work / "snap" / "data"
        data.mkdir(parents=True)
        for entry in manifest["files"]:
            if nodectl.safe_relative(entry["path"]) and entry["path"] != ".":
                try:
                    if entry["type"] == "dir":
                        (data / entry["path"]).mkdir(parents=True, exist_ok=True)
                    else:
                        (data / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
                        (data / entry["path"]).write_bytes(files[entry["path"]])
                except OSError:
                    pass  # a name twice: the manifest is refused anyway
        target = work / "new"
        owner = (os.geteuid(), os.getegid())
        if nodectl.manifest_problem(manifest) is not None:
            with pytest.raises(SystemExit):
                nodectl.rebuild(work / "snap", manifest, target, owner)  # type: ignore[arg-type]
            assert not target.exists()
            return
        nodectl.rebuild(work / "snap", manifest, target, owner)  # type: ignore[arg-type]
        found = [target, *target.rglob("*")]
        assert {str(path.relative_to(target)) for path in found} == {
            entry["path"] for entry in manifest["files"]}
        for path in found:
            info = path.lstat()
            assert stat.S_IMODE(info.st_mode) & 0o7022 == 0
            assert (info.st_uid, info.st_gid) == owner
        assert sorted(path.name for path in work.iterdir()) == ["new", "snap"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
