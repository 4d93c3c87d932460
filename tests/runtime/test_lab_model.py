"""The lab model server's plumbing that needs no build: the lab registry points agents at it,
and ``stop`` ends a server left behind on the lab's address (it would hold the port)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fleet.core.registry import load_registry
from fleet.lab import model
from fleet.lab.network import INDEX_FILE
from tests.lab_fixtures import EXAMPLE_REGISTRY


def test_agents_without_a_chat_api_think_with_the_lab_model() -> None:
    registry = model.with_lab_provider(load_registry(EXAMPLE_REGISTRY),
                                       model.base_url(7))
    for agent in registry:
        assert (agent.provider, agent.provider_url, agent.runtime) == (
            "lab-model", "http://10.231.7.1:8650/v1", "builtin")
        assert agent.to_dict()["provider"] == {"name": "lab-model",
                                               "base_url": "http://10.231.7.1:8650/v1"}


STAND_IN = ("import signal, sys, time\n"
            "def stopped(*_):\n"
            "    print('SIGTERM', flush=True)\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stopped)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
"""A model server's stand-in: says when it is ready, and that it was asked to stop."""


def test_stop_ends_a_server_left_behind_on_the_labs_address(tmp_path: Path) -> None:
    (tmp_path / INDEX_FILE).write_text("250\n")
    left, other = (subprocess.Popen([sys.executable, "-c", STAND_IN, "llama_cpp.server",
                                     "--host", address], stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
                   for address in ("10.231.250.1", "10.231.251.1"))
    try:
        for process in (left, other):
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        model.stop(tmp_path, timeout=30)  # the longest it waits for SIGTERM before SIGKILL
        assert left.poll() is not None, "still running when stop returned"
        assert left.communicate(timeout=10)[0] == "SIGTERM\n"  # asked to stop, not killed
        assert other.poll() is None  # another lab's server is left alone
    finally:
        for process in (left, other):
            process.kill()
            process.communicate()
