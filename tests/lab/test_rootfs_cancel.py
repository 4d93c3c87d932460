"""SIGTERM to ``fleet lab up`` while it builds the base rootfs stops debootstrap and all it
started, and leaves no build behind (a stand-in debootstrap on PATH: no network needed)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from fleet.core.liveness import alive
from tests.lab_fixtures import skip_unless_root
from tests.waiting import wait_for

FAKE_DEBOOTSTRAP = """#!/bin/sh
# stand-in debootstrap: a long build with a child of its own, both recorded
sleep 600 &
echo $! > "$FAKE_PIDS/child"
echo $$ > "$FAKE_PIDS/debootstrap"
wait
"""
REGISTRY = "wizards:\n  ezra:\n    host: 192.0.2.10\n    role: orchestrator\n    model: m\n"


def test_sigterm_during_the_rootfs_build_stops_debootstrap(tmp_path: Path) -> None:
    skip_unless_root()
    bin_dir, pids, cache = tmp_path / "bin", tmp_path / "pids", tmp_path / "cache"
    for folder in (bin_dir, pids):
        folder.mkdir()
    fake = bin_dir / "debootstrap"
    fake.write_text(FAKE_DEBOOTSTRAP)
    fake.chmod(0o755)
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_PIDS": str(pids),
           "FLEET_LAB_ROOT": str(tmp_path / "labs"), "FLEET_CACHE_DIR": str(cache)}
    up = subprocess.Popen([sys.executable, "-m", "fleet", "--registry", str(registry), "lab",
                           "up", "--lab", f"cancel-{os.getpid()}"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (pids / "debootstrap").exists() and (pids / "child").exists()
                 and (pids / "debootstrap").read_text().strip(), timeout=120,
                 what="the stand-in debootstrap to start")
        builder = int((pids / "debootstrap").read_text())
        child = int((pids / "child").read_text())
        assert alive(builder) and alive(child)
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        for name in ("debootstrap", "child"):  # what a failed stop left behind
            recorded = pids / name
            if recorded.exists() and recorded.read_text().strip():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(recorded.read_text()), signal.SIGKILL)
    assert up.returncode == 1, err
    assert "SIGTERM: stopping and cleaning up the lab ..." in err
    assert "building the bookworm base rootfs was cancelled; cleaning up" in err
    assert "Error: `debootstrap` was stopped: the lab start was cancelled" in err
    assert not alive(builder) and not alive(child)
    assert sorted(path.name for path in cache.iterdir()) == ["rootfs.lock"]
    assert not (tmp_path / "labs" / f"cancel-{os.getpid()}" / "state.json").exists()
