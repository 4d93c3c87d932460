"""Per-host results from what real pyinfra 3.10 prints with ``-y --json`` (on ``@local``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.webhook.results import find_pyinfra_json, host_results

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def run_pyinfra(tmp_path: Path, operations: str) -> tuple[int, str]:
    """Run a deploy file on @local with ``-y --json``; exit status and combined output."""
    deploy = tmp_path / "deploy.py"
    deploy.write_text("from pyinfra.operations import files, server\n" + operations)
    done = subprocess.run([PYINFRA, "-y", "--json", "@local", str(deploy)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})
    return done.returncode, done.stdout


@pytest.mark.slow
def test_changes_and_no_changes_per_host(tmp_path: Path) -> None:
    target = tmp_path / "made"
    operations = (f"files.directory(name='Make dir', path={str(target)!r})\n"
                  "server.shell(name='Say hi', commands=['true'])\n")
    run_pyinfra(tmp_path, operations)  # first run creates the directory
    code, log = run_pyinfra(tmp_path, operations)
    assert code == 0
    assert find_pyinfra_json(log) is not None
    assert host_results(log) == {"@local": {"status": "ok", "changed": 1, "unchanged": 1,
                                            "failed": 0, "changes": ["Say hi"], "errors": []}}


@pytest.mark.slow
def test_when_every_host_fails_the_log_names_them(tmp_path: Path) -> None:
    code, log = run_pyinfra(tmp_path, "server.shell(name='Boom', commands=['false'])\n")
    assert code != 0
    assert find_pyinfra_json(log) is None  # pyinfra stops with "No hosts remaining"
    assert host_results(log) == {"@local": {"status": "error", "changed": 0, "unchanged": 0,
                                            "failed": 1, "changes": [], "errors": ["see log"]}}


def test_a_log_without_pyinfra_output_has_no_hosts() -> None:
    assert host_results("==> deploy command not found\n") == {}
