"""The lab's long steps: live on a terminal (the step, its elapsed time ticking, its usual
time here), one plain line per step and no escape code when output is not a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.lab.steps import remember, usual_seconds

STEP = """
import time
from fleet.cli.progress import LabProgress
from fleet.lab.steps import long_step
progress = LabProgress()
progress("before the step")
with long_step(progress, "demo-build", "building the demo"):
    time.sleep(2.6)
progress("after the step")
"""


def run_step(tmp_path: Path, terminal: bool) -> str:
    """The step's output as a terminal (``script``'s pseudo-terminal) or a pipe shows it."""
    env = {**os.environ, "FLEET_CACHE_DIR": str(tmp_path), "PYTHONPATH": os.getcwd(),
           "COLUMNS": "120", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    command = [sys.executable, "-c", STEP]
    if terminal:
        log = tmp_path / "typescript"
        subprocess.run(["script", "-q", "-e", "-c", " ".join(map(repr_sh, command)), str(log)],
                       env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, timeout=60)
        return log.read_text(errors="replace")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True,
                          timeout=60)
    return done.stdout + done.stderr


def repr_sh(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


@pytest.mark.skipif(not os.path.exists("/usr/bin/script"), reason="util-linux script")
def test_on_a_terminal_the_step_ticks_with_its_usual_time(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CACHE_DIR", str(tmp_path))
    remember("demo-build", 71.0)
    screen = run_step(tmp_path, terminal=True)
    assert "\x1b[" in screen  # drawn live
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # the text drawn, colours aside
    ticks = set(re.findall(r"building the demo\s+0:00:0([0-9])", plain))
    assert {"0", "1", "2"} <= ticks, screen  # the elapsed time updates while it runs
    assert "(usually 71 s here)" in plain
    assert "building the demo: done after 3 s" in plain
    assert usual_seconds("demo-build") == pytest.approx(2.6, abs=0.5)  # kept for next time


def test_without_a_terminal_each_step_is_one_plain_line(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CACHE_DIR", str(tmp_path))
    remember("demo-build", 71.0)
    output = run_step(tmp_path, terminal=False)
    assert "\x1b" not in output
    assert output.splitlines() == ["before the step",
                                   "building the demo (usually 71 s here)",
                                   "building the demo: done after 3 s",
                                   "after the step"]
