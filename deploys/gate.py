"""Rollout gate: a later stage's hosts wait here until the earlier stages passed.

``fleet deploy`` runs one pyinfra process per rollout stage (``--limit`` the stage's hosts,
``--data rollout_stage=N``) and starts stage N's process while stage N-1 still deploys, so it
connects and plans in the meantime. On every host the gate comes right after preflight (its
checks, and the deploy lock) and, with ``fleet.prestage``, the release's upload and unpacking
(``deploys.release.prestage``, which switches nothing the agent uses): it waits for the
controller's verdict on the earlier stages (written to the run record when all their hosts
are audited) and goes on only when no more hosts than allowed failed. Otherwise the host is
recorded ``skipped``, releases its deploy lock and fails here, before anything else changes on
it (a pre-staged release stays unpacked, unused, until pruned). The gate is a check, not a
change: at plan time (a dry run) it does nothing.

The hand-off does not poll. The gate reads the record first (a verdict written before this
process started is seen there); then it blocks on the verdict pipe the controller gave this
process (``$FLEET_VERDICT_FD``, :class:`fleet.control.rollout_events.VerdictPipe`), on which
the controller writes a note right after writing its verdict to the record, and reads the
record again on each note. The stage's hosts share one reader of the pipe (one host reads it,
the others wait cooperatively under gevent). End of file on the pipe means the controller is
gone: the host is skipped. Every skip is recorded, then told to the controller on the phase
pipe ("recorded"), so it judges this stage without waiting for the process to end. Without a
verdict pipe (a later stage started by hand with ``--data rollout_stage=N``) the gate reads the
record every :data:`FALLBACK_S` seconds and gives up when the ``rollout_controller`` process is
no longer its parent. A host waits at most :data:`WAIT_LIMIT_S`.

A host with nothing to change does not wait (known once every phase has planned, see
``deploys/verify.py``): what it runs, verify and audit, checks the agent that is already
there, so it checks it while the earlier stages deploy. Its stage is still judged as usual.
"""

from __future__ import annotations

import os
import time

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, Host, State, operation

from deploys import lock
from deploys.context import AgentContext, phase, stage_of
from deploys.preflight import Preflight
from deploys.progress import tell
from fleet.control.records import RecordWatch, Verdict, current_run_id, record_path, update_host
from fleet.control.rollout_events import send_recorded, verdict_pipe

FALLBACK_S = 0.5  # without a verdict pipe: how often the record is read
WAIT_LIMIT_S = 6 * 3600.0  # a stage never waits longer than this for the ones before it
GONE = "not deployed: the fleet deploy that started this stage is gone"
_watches: dict[str, RecordWatch] = {}  # one per record in this process: its hosts share it


def verdict_on(run_id: str, stage: int) -> Verdict | None:
    """The controller's verdict on stage ``stage`` in the record now. The stage's hosts share
    one watch of the record: it is parsed again only when it changed."""
    key = str(record_path(run_id))
    watch = _watches.get(key) or _watches.setdefault(key, RecordWatch(run_id))
    return watch.read().get("verdicts", {}).get(str(stage))


def wait_for_verdict(state: State, host: Host, stage: int, controller: int) -> bool:
    """Wait until the controller judged stage ``stage - 1``; True when this host may go on.
    ``controller``: the ``fleet deploy`` pid, checked only without a verdict pipe."""
    del state
    run_id = current_run_id()
    deadline = time.monotonic() + WAIT_LIMIT_S
    pipe = verdict_pipe()
    tell(host.name, "waiting")
    while True:
        seen = pipe.notes if pipe else 0  # before reading: a note after it wakes this host
        verdict = verdict_on(run_id, stage - 1)
        if verdict is not None:
            break
        if pipe is not None and pipe.closed:
            return _skip(host, run_id, GONE)
        if pipe is None and controller and os.getppid() != controller:
            return _skip(host, run_id, GONE)
        left = deadline - time.monotonic()
        if left <= 0:
            return _skip(host, run_id, "not deployed: no verdict on the earlier stages came")
        if pipe is not None:
            pipe.wait(seen, left)
        else:
            time.sleep(min(FALLBACK_S, left))
    if verdict["go"]:
        return True
    if verdict.get("reason"):
        return _skip(host, run_id, verdict.get("reason", ""))
    return _skip(host, run_id, f"not deployed: {verdict['failures']} host(s) of earlier rollout "
                               f"stages failed (allowed: {verdict['allowed']})")


def _skip(target: Host, run_id: str, reason: str) -> bool:
    """Record ``target`` skipped with ``reason``; False (the host fails here)."""
    update_host(run_id, target.name, {"status": "skipped", "reason": reason})
    send_recorded(target.name)
    target.log_styled(reason, fg="yellow", log_func=logger.warning)
    return False


def gate_passed(state: State, host: Host, stage: int, controller: int) -> bool:
    """:func:`wait_for_verdict`; a host that may not go on releases the deploy lock it took
    before the gate (preflight takes it, before any pre-staging), so the node is not left
    locked by a deploy that stopped here."""
    if wait_for_verdict(state, host, stage, controller):
        return True
    lock.release_now(host)
    return False


@operation(is_idempotent=False)
def earlier_stages_passed(stage: int, controller: int = 0):
    """
    Wait for the controller's verdict on the rollout stages before ``stage``; fail the host
    (nothing changes on it) when they failed. A check, not a change: nothing at plan time.

    + stage: this host's rollout stage (1 or more)
    + controller: pid of the ``fleet deploy`` process; without a verdict pipe, the gate fails
      when it is no longer this process's parent

    **Example:**

    .. code:: python

        earlier_stages_passed(name="Rollout: earlier stages passed", stage=1)
    """
    if not state.is_executing:
        host.noop("the rollout gate waits for the earlier stages when the deploy runs")
        return
    yield FunctionCommand(gate_passed, (stage, controller), {})


@phase("Rollout")
def run(ctx: AgentContext, ready: Preflight) -> None:
    """In a later stage of ``fleet deploy``, wait for the earlier stages' verdict first,
    unless nothing changes on the host (then nothing is planned: ``ready.converged``, the
    probe's verdict; else ``_if=``, once the plan is known)."""
    stage = stage_of(host)
    if stage and not ready.converged:
        controller = host.data.get("rollout_controller")
        ctx.check(earlier_stages_passed, "Rollout: earlier stages passed", stage=stage,
                  controller=controller if isinstance(controller, int) else 0,
                  _if=lambda: ctx.will_change)
