"""A node that vanishes in the middle of a command (its link cut, as by a partition) fails
its host within the dead-peer time instead of holding the deploy's SSH connection forever
(fleet.control.sshsocket through pyinfra's ``ssh_paramiko_connect_kwargs``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet import lab
from fleet.control.sshsocket import DEAD_AFTER_S
from fleet.core.registry import load_registry
from fleet.lab.regions import set_links
from tests.deploy.conftest import make_fleet
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
MARKER = "417.25"  # the sleep's argument: finds the command on the node from the host


def sleeping() -> bool:
    """Whether the node runs the sleep (its whole command line: not pyinfra's own)."""
    found = subprocess.run(["pgrep", "-f", f"^sleep {MARKER.replace('.', '[.]')}$"],
                           capture_output=True, check=False)
    return found.returncode == 0


def test_a_node_cut_off_mid_command_fails_its_host_instead_of_hanging(tmp_path: Path) -> None:
    skip_unless_root()
    claimed = claim_test_lab("vanish")
    try:
        lab.down(claimed.lab)
        registry = lab.up(load_registry(EXAMPLE_REGISTRY), nodes=1, lab=claimed.lab)
        fleet = make_fleet(registry, tmp_path)
        command = subprocess.Popen(
            [sys.executable, "-m", "pyinfra", "-y", "inventory.py", "exec", "--", "sleep",
             MARKER], cwd=fleet.clone, env=fleet.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            def started() -> bool:
                assert command.poll() is None, command.communicate()[0]
                return sleeping()

            wait_for(started, 120, "the command to start on the node", every=0.2)
            node, = lab.lab_nodes(claimed.lab)
            set_links([node.netns], up=False)
            cut = time.monotonic()
            output, _ = command.communicate(timeout=DEAD_AFTER_S + 90)
            took = time.monotonic() - cut
        finally:
            if command.poll() is None:
                command.kill()
                command.wait()
        assert command.returncode != 0, output
        assert took < DEAD_AFTER_S + 90, f"{took:.0f} s after the cut: {output}"
        assert "Error: executed 0 commands" in output, output
    finally:
        lab.down(claimed.lab)
        claimed.release()
