"""A scripted stand-in for one rollout stage's pyinfra process: ``python -m
tests.deploy.fake_stage ARGS``, with the arguments ``fleet.control.rollout.pyinfra_command``
gives. It waits at the real rollout gate in a later stage, writes each host's entry of the run
record as ``$FAKE_STAGE_OUTCOMES`` (JSON: host -> entry, default ``{"status": "ok"}``) says
(telling the controller "recorded" as the audit does), and prints pyinfra-like lines only once
the controller judged the stage, so the controller's lines and the stage's come in one order
every time. It reports its hosts' phases as the real deploy does (``preflight``, then
``baseline``; the gate says ``waiting``). Nothing is reached over SSH. ``python -m
tests.deploy.fake_stage --cli ARGS`` runs ``fleet ARGS`` with every stage scripted so."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from deploys.gate import gate_passed
from fleet.control import rollout
from fleet.control.records import RecordWatch, current_run_id, update_host
from fleet.control.rollout_events import send_phase, send_recorded

OUTCOMES_ENV = "FAKE_STAGE_OUTCOMES"
LINGER_ENV = "FAKE_STAGE_LINGER"  # seconds a stage runs on after its output (default 0)
TRACE_ENV = "FAKE_STAGE_TRACE"  # a folder: each stage writes ``<stage>.pid`` as it starts,
# ``<stage>.waiting`` before its gate and ``<host>.released`` when the gate releases the lock
HANG_ENV = "FAKE_STAGE_HANG"  # a stage number: that stage hangs once started (until killed)
FOREIGN_ENV = "FAKE_STAGE_FOREIGN"  # a host name every stage also reports as verified and
# recorded, whichever stage it belongs to (a stage speaking for another's host)


def script_rollout(setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Have :mod:`fleet.control.rollout` run this module for each stage, with release
    ``rel-1`` and no host key check (``setattr_``: pytest's ``monkeypatch.setattr`` in a
    test)."""
    real = rollout.pyinfra_command
    setattr_(rollout, "check_known_hosts", lambda registry, names: None)
    setattr_(rollout, "build_release", lambda root: SimpleNamespace(id="rel-1"))
    setattr_(rollout, "release_env", lambda release: {})
    setattr_(rollout, "pyinfra_command", lambda *args, **kwargs: [
        sys.executable, "-m", "tests.deploy.fake_stage", *real(*args, **kwargs)[3:]])


def released(trace: Path | None, name: str) -> Callable[..., tuple[bool, None]]:
    """The host's ``run_shell_command``: the gate runs only the lock's release through it."""
    def run(command: object, **kwargs: object) -> tuple[bool, None]:
        if trace:
            (trace / f"{name}.released").write_text(str(command))
        return True, None
    return run


def main(argv: list[str]) -> int:
    """Run the scripted stage; exit 1 when a host failed, as pyinfra does."""
    hosts = [argv[i + 1].replace("[", "").replace("]", "")  # rollout.limit_pattern's
             for i, arg in enumerate(argv) if arg == "--limit"]
    data = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--data")
    stage, controller = int(data.get("rollout_stage", 0)), int(data.get("rollout_controller", 0))
    outcomes = json.loads(os.environ.get(OUTCOMES_ENV, "{}"))
    run_id = current_run_id()
    lines = ["--> Loading config...", "--> Connecting to hosts...",
             *[f"    [{name}] Connected" for name in hosts]]
    trace = Path(os.environ[TRACE_ENV]) if os.environ.get(TRACE_ENV) else None
    if trace:
        (trace / f"{stage}.pid").write_text(str(os.getpid()))
    for name in hosts:
        send_phase(name, "preflight")
    if os.environ.get(FOREIGN_ENV):
        send_phase(os.environ[FOREIGN_ENV], "verify")
        send_recorded(os.environ[FOREIGN_ENV])
    while os.environ.get(HANG_ENV) == str(stage):
        time.sleep(3600)
    if trace and stage:
        (trace / f"{stage}.waiting").write_text("")
    go = {}
    for name in hosts:
        target = SimpleNamespace(name=name, data={}, log_styled=lambda text, **_: lines.append(
            f"    {text}"), run_shell_command=released(trace, name))
        go[name] = not stage or gate_passed(None, target, stage, controller)  # type: ignore[arg-type]
    lines.append("--> Starting operation: Baseline | Agent user and group")
    for name in hosts:
        if go[name]:
            send_phase(name, "baseline")
            entry = outcomes.get(name, {"status": "ok"})
            lines.append(f"    [{name}] {'Success' if entry['status'] == 'ok' else 'Error'}")
            update_host(run_id, name, {"release": "rel-1", "changed": [], "restarted": False,
                                       **entry})
            send_recorded(name)
    if all(go.values()):  # the controller judges this stage: wait for it (at most 60 s)
        watch, deadline = RecordWatch(run_id), time.monotonic() + 60
        while str(stage) not in watch.read().get("verdicts", {}) and time.monotonic() < deadline:
            time.sleep(0.01)
    print("\n".join(lines), flush=True)
    time.sleep(float(os.environ.get(LINGER_ENV, "0")))  # a stage that runs on once judged
    failed = not all(go.values()) or any(
        outcomes.get(name, {}).get("status", "ok") != "ok" for name in hosts)
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cli"]:  # `fleet ARGS` with the scripted rollout
        from fleet.cli import main as fleet

        script_rollout()
        fleet(sys.argv[2:], prog_name="fleet")
    sys.exit(main(sys.argv[1:]))
