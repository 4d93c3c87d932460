"""The tool supervisor inside the gateway's own sandbox on a real node: under every hardening
line of the gateway unit (``SystemCallFilter=@system-service ~@privileged @resources``,
``NoNewPrivileges``, ``PrivateUsers``, ``MemoryDenyWriteExecute``, ...), as an unprivileged
user, it becomes a subreaper and kills a child that left the process group (``setsid``) at
the timeout, so the run ends at the timeout and nothing is left behind."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.control.templates import read_template
from fleet.core.registry import load_registry
from fleet.lab.node import ssh_base
from fleet.node.tools import supervise

pytestmark = [pytest.mark.lab, pytest.mark.slow]
ON_NODE = "/opt/fleet-test/supervise.py"


def sandbox() -> list[str]:
    """The gateway unit's hardening lines (the sandbox block every fleet unit includes) as
    ``systemd-run -p`` options."""
    assert '{% include "sandbox.conf.j2" %}' in read_template("fleet-agent.service.j2")
    settings = [line for line in read_template("sandbox.conf.j2").splitlines()
                if "=" in line and not line.startswith("#") and "{{" not in line]
    assert "SystemCallFilter=~@privileged @resources" in settings
    return [option for setting in settings for option in ("-p", setting)]


@pytest.fixture(scope="module")
def node(session_lab_name: str, lab_registry: Path) -> Iterator[list[str]]:
    """ssh to a node of the session lab, with the supervisor at :data:`ON_NODE` (removed
    afterwards; the lab stays up for the tests after this one)."""
    agent = next(iter(load_registry(lab_registry)))
    base = ssh_base(lab.ssh_config(session_lab_name), agent.name)
    subprocess.run([*base, f"mkdir -p {Path(ON_NODE).parent} && cat > {ON_NODE}"],
                   input=Path(supervise.__file__).read_bytes(), check=True, timeout=60)
    try:
        yield base
    finally:
        subprocess.run([*base, f"rm -rf {Path(ON_NODE).parent}"], check=False, timeout=60)


def test_a_setsid_child_is_killed_at_the_timeout_inside_the_gateway_sandbox(
        node: list[str]) -> None:
    command = ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "User=nobody", *sandbox(),
               "/usr/bin/python3", "-I", "-S", ON_NODE, "1", "65536", "--",
               "sh", "-c", "cat /proc/self/status; setsid sleep 8 & sleep 30"]
    started = time.monotonic()
    ran = subprocess.run([*node, " ".join(f"'{arg}'" for arg in command)], input=b"",
                         capture_output=True, timeout=60, check=False)
    took = time.monotonic() - started
    assert ran.returncode == 0, ran.stderr.decode()
    report = supervise.decode(ran.stdout)
    assert report.error is None, report.error
    status = dict(line.split(":\t", 1) for line in report.stdout.splitlines())
    assert (status["Seccomp"], status["NoNewPrivs"]) == ("2", "1"), "not in the sandbox"
    assert report.timed_out is True
    assert took < 6, f"the run was held {took:.1f} s by a child that left the group"
    left = subprocess.run([*node, "pgrep -u nobody -x sleep"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert left.stdout == "", f"left running: {left.stdout}"
