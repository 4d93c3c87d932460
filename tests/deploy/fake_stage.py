"""A scripted stand-in for one rollout stage's pyinfra process (``python -m
tests.deploy.fake_stage ARGS``, with the arguments ``fleet.control.rollout.pyinfra_command``
gives): it waits at the real rollout gate in a later stage, writes each host's entry of the
run record as ``$FAKE_STAGE_OUTCOMES`` (JSON: host -> entry, default ``{"status": "ok"}``)
says, and prints pyinfra-like lines only once the controller judged the stage, so the
controller's lines and the stage's come in one order every time. Nothing is reached over
SSH."""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

from deploys.gate import wait_for_verdict
from fleet.control.records import RecordWatch, current_run_id, update_host

OUTCOMES_ENV = "FAKE_STAGE_OUTCOMES"


def main(argv: list[str]) -> int:
    """Run the scripted stage; exit 1 when a host failed, as pyinfra does."""
    hosts = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--limit"]
    data = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--data")
    stage, controller = int(data.get("rollout_stage", 0)), int(data.get("rollout_controller", 0))
    outcomes = json.loads(os.environ.get(OUTCOMES_ENV, "{}"))
    run_id = current_run_id()
    lines = ["--> Loading config...", "--> Connecting to hosts...",
             *[f"    [{name}] Connected" for name in hosts]]
    go = {}
    for name in hosts:
        target = SimpleNamespace(name=name, log_styled=lambda text, **_: lines.append(
            f"    {text}"))
        go[name] = not stage or wait_for_verdict(None, target, stage, controller)  # type: ignore[arg-type]
    lines.append("--> Starting operation: Baseline | Agent user and group")
    for name in hosts:
        if go[name]:
            entry = outcomes.get(name, {"status": "ok"})
            lines.append(f"    [{name}] {'Success' if entry['status'] == 'ok' else 'Error'}")
            update_host(run_id, name, {"release": "rel-1", "changed": [], "restarted": False,
                                       **entry})
    if all(go.values()):  # the controller judges this stage: wait for it (at most 60 s)
        watch, deadline = RecordWatch(run_id), time.monotonic() + 60
        while str(stage) not in watch.read().get("verdicts", {}) and time.monotonic() < deadline:
            time.sleep(0.01)
    print("\n".join(lines), flush=True)
    failed = not all(go.values()) or any(
        outcomes.get(name, {}).get("status", "ok") != "ok" for name in hosts)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
