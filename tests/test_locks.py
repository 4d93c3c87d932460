"""One lock between processes (bus/locks.py): an ``flock`` on a lock file, with a blocking
context manager, a non-blocking try, a probe and the holder's pid where a caller asks for it;
every lock of the bus, the receiver, the run records and the lab goes through it."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bus.locks import FileLock
from fleet.lab.claims import claim, in_use
from fleet.webhook.lock import DeployLock, DispatcherLock

REPO = Path(__file__).resolve().parent.parent
OWNER = "bus/locks.py"
STANDALONE = "fleet/node/nodectl.py"  # stdlib only (python3 -IS): the snapshot lock of its own
# Holds the lock on argv[1] until its stdin closes; says "held" once it has it.
HOLDER = ("import sys\nfrom bus.locks import FileLock\nlock = FileLock(sys.argv[1])\n"
          "lock.acquire()\nprint('held', flush=True)\nsys.stdin.read()\n")


def hold(path: Path) -> subprocess.Popen[str]:
    """A process holding the lock on ``path`` (until its stdin is closed)."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ,
                                                                     "PYTHONPATH": str(REPO)})
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def end(child: subprocess.Popen[str]) -> None:
    """Let a :func:`hold` process exit."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    child.stdout.close()
    child.wait(timeout=30)


def test_another_process_holding_it_makes_a_try_fail_until_it_exits(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.lock"
    mine = FileLock(path)
    assert not mine.held()  # no file yet: nobody holds it, and the probe creates none
    assert not path.exists()
    child = hold(path)
    try:
        assert mine.held()
        assert not mine.acquire(blocking=False) and mine.fd is None  # the file closed again
    finally:
        end(child)  # the kernel drops the lock of a process that ends
    assert not mine.held()
    with mine:
        assert mine.fd is not None and mine.held()
        assert not FileLock(path).acquire(blocking=False)  # another open file, same process
    assert mine.fd is None and not mine.held()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_child_given_the_descriptor_holds_the_lock_until_it_is_unlocked(
        tmp_path: Path) -> None:
    """The receiver hands the deploy lock to the deploy command (``pass_fds``): closing its own
    copy leaves the lock with the child; ``release`` (an unlock) takes it from both."""
    lock = DeployLock(tmp_path)
    assert lock.acquire()
    assert lock.fd is not None and not os.get_inheritable(lock.fd)  # only when handed over
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, pass_fds=(lock.fd,))
    try:
        assert lock.held()
        lock.release()
        assert not lock.held()  # unlocked for the child's copy too
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def test_a_child_keeps_a_handed_lock_that_its_parent_closes(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "deploy.lock")
    lock.acquire()
    assert lock.fd is not None
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, pass_fds=(lock.fd,))
    try:
        lock.close()
        assert lock.held()  # the child's copy holds it
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert not lock.held()


def test_the_receivers_locks_write_their_holders_pid(tmp_path: Path) -> None:
    (tmp_path / "dispatcher.lock").write_text("123456789\nold junk\n")
    with DeployLock(tmp_path) as deploy:
        assert deploy.path == tmp_path / "deploy.lock"
        assert deploy.path.read_text() == f"{os.getpid()}\n"
    dispatcher = DispatcherLock(tmp_path)
    assert dispatcher.acquire(blocking=False)
    try:
        assert dispatcher.path.read_text() == f"{os.getpid()}\n"
        assert not DispatcherLock(tmp_path).acquire(blocking=False)
    finally:
        dispatcher.release()
    lock = FileLock(tmp_path / "plain.lock")
    with lock:
        assert lock.path.read_text() == ""  # pids only where a caller asks for them


def test_a_lab_claim_is_a_lock_everyone_can_probe(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_LAB_ROOT", str(tmp_path))
    assert not in_use("t1")
    held = claim("t1")
    assert held is not None and in_use("t1") and claim("t1") is None
    assert stat.S_IMODE((tmp_path / "t1" / "in-use.lock").stat().st_mode) == 0o644
    held.release()
    assert not in_use("t1")


def flocks(tree: ast.AST) -> list[int]:
    """Lines that lock a file themselves: ``fcntl.flock``/``fcntl.lockf`` or ``flock`` /
    ``lockf`` imported from ``fcntl``."""
    found = []
    for node in ast.walk(tree):
        imported = isinstance(node, ast.ImportFrom) and node.module == "fcntl" and any(
            alias.name in {"flock", "lockf"} for alias in node.names)
        called = (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "fcntl" and node.attr in {"flock", "lockf"})
        if imported or called:
            found.append(node.lineno)
    return sorted(found)


def test_every_lock_goes_through_the_one_lock_module() -> None:
    found = [f"{path.relative_to(REPO)}:{line}"
             for package in ("fleet", "bus", "deploys")
             for path in sorted((REPO / package).rglob("*.py"))
             if str(path.relative_to(REPO)) not in (OWNER, STANDALONE)
             for line in flocks(ast.parse(path.read_text()))]
    assert found == []
    assert flocks(ast.parse((REPO / OWNER).read_text()))
    assert flocks(ast.parse("import fcntl\nfcntl.flock(fd, 1)\nfrom fcntl import lockf\n"
                            "fcntl.ioctl(fd, 1)\n")) == [2, 3]
