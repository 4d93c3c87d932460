"""One liveness check (pid and start time): a pid reused by another process is not the
process that held it; used by the deploy lock, the webhook dispatcher and the lab."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from fleet.core.liveness import Process, alive, process_tag, start_time


def test_a_process_is_alive_until_it_exits() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    tag = process_tag(child.pid)
    assert tag == f"{child.pid}.{start_time(child.pid)}"
    process = Process.parse(tag)
    assert process is not None and process.alive() and alive(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert not alive(child.pid) and not process.alive()
    child.wait()
    assert not alive(child.pid) and start_time(child.pid) is None


def test_a_reused_pid_is_not_the_process_that_held_it() -> None:
    me = os.getpid()
    started = start_time(me)
    assert started is not None
    assert alive(me, started) and Process(me, started).alive()
    assert not alive(me, started + 1)  # the same pid, started at another time: a stranger
    assert not Process(me, started - 1).alive()


def test_tags_parse() -> None:
    assert Process.parse("42.1234") == Process(42, 1234)
    assert Process.parse("42") == Process(42, None)
    assert Process.parse("42.0") == Process(42, None)
    for bad in ("", "x", "42.x", "-1", "٤٢", "42.1.2"):
        assert Process.parse(bad) is None, bad
    assert not alive(0) and not alive(-1)


def test_the_deploy_lock_of_a_reused_pid_is_stale() -> None:
    from deploys import lock

    now = time.time()
    here = socket.gethostname()
    me = os.getpid()
    started = start_time(me)
    assert started is not None
    assert lock.owner().startswith(f"{here}:{me}.{started}:")
    assert not lock.stale(f"{here}:{me}.{started}:run-1 {now:.0f}", now)
    assert lock.stale(f"{here}:{me}.{started + 1}:run-1 {now:.0f}", now)  # pid reused
    assert not lock.stale(f"{here}:{me}:run-1 {now:.0f}", now)  # an older lock: pid only
    assert lock.stale(f"{here}:999999999.5:run-1 {now:.0f}", now)  # no such pid
