"""Phase 9, audit: what the node really runs, compared with the registry, in the run record.

Per host: release, soul and config hashes, unit state, listening ports, authorized key
fingerprints, sudoers lines; the operations that changed, whether the service restarted,
the verify outcome; and every drift from what the registry says. Then the node's deploy lock
is released, and a host whose verify failed is failed here, naming the reason and the release
it is back on.
"""

from __future__ import annotations

import json
from typing import Any, cast

from pyinfra import host, logger, state
from pyinfra.api import BaseStateCallback, FunctionCommand, Host, State, operation

from bus.timestamps import utc_timestamp
from deploys import lock
from deploys.context import NODECTL, AgentContext, context_of, phase
from deploys.facts import AgentAudit
from deploys.verify import Check
from fleet.control.expected import Expected, compare
from fleet.control.records import (
    CheckRecord,
    HostRecord,
    HostStatus,
    current_run_id,
    load_record,
    update_host,
)
from fleet.control.rollout_events import send_recorded
from fleet.node.nodectl import (
    AgentFacts,
    FileFacts,
    RollbackOutcome,
    VerifyOutcome,
    fingerprint,
)

AUDIT = "Audit: record the node's state and drift, release the lock"


def drift(facts: AgentFacts, ctx: AgentContext, expected_release: str) -> list[str]:
    """Every difference between the node (``facts``) and the registry/release wanted."""
    agent = ctx.agent
    must = Expected(config_hash=ctx.config_hash(), soul_sha256=ctx.soul_sha256())
    found = list(compare(facts.get("release"), facts.get("soul_sha256"), facts.get("config_hash"),
                         must, expected_release, absent="drift")[1])
    unit: dict[str, str] = facts.get("unit", {})
    if unit.get("ActiveState") != "active":
        found.append(f"{ctx.unit} is {unit.get('ActiveState')}, expected active")
    if unit.get("UnitFileState") != "enabled":
        found.append(f"{ctx.unit} is {unit.get('UnitFileState')}, expected enabled")
    if agent.gateway_port not in facts.get("ports", []):
        found.append(f"nothing listens on gateway port {agent.gateway_port}")
    health = facts.get("health") or {}
    if facts.get("health_status") != 200:
        found.append(f"/health answers {facts.get('health_status')}: "
                     f"{'; '.join(health.get('problems', [])) or 'no answer'}")
    elif health.get("release") != facts.get("release"):
        found.append(f"gateway runs release {health.get('release')}, current is "
                     f"{facts.get('release')} (restart pending)")
    present = set(facts.get("authorized_keys", []))
    for key in agent.authorized_keys:
        print_ = fingerprint(key)
        if print_ and print_ not in present:
            found.append(f"operator key {print_} missing from {agent.ssh_user}'s authorized_keys")
    wanted = {
        f"/etc/fleet/{agent.name}/env": ("0600", "root"),
        f"/etc/fleet/{agent.name}/soul.md": ("0444", "root"),
        f"/var/lib/fleet/{agent.name}": ("0700", agent.name),
    }
    files: dict[str, FileFacts | None] = facts.get("files", {})
    for path, (mode, owner) in wanted.items():
        info = files.get(path)
        if not info:
            found.append(f"{path} is missing")
        elif (info["mode"], info["user"]) != (mode, owner):
            found.append(f"{path} is {info['mode']} {info['user']}, expected {mode} {owner}")
    return found


def check_result(ctx: AgentContext, check: Check) -> tuple[CheckRecord, AgentFacts | None]:
    """This host's verify outcome, from the JSON its verify (or rollback) printed (a
    rollback's in the shape of a verify's), and the agent's facts when it printed them."""
    output = check.op.stdout if check.op.is_complete() else ""
    try:
        printed = json.loads(output) if output.strip() else None
    except ValueError:
        printed = None
    if not isinstance(printed, dict) or not printed:
        return {"ok": False, "problems": ["fleet-nodectl did not answer (no JSON output)"]}, None
    if ctx.rollback:
        rolled = cast(RollbackOutcome, printed)
        facts = rolled.pop("facts", None)
        healthy = bool(rolled.get("rolled_back") and rolled.get("healthy"))
        problems = rolled.get("problems") or [rolled.get("reason") or "rollback failed"]
        return {"ok": healthy, "problems": [] if healthy else problems, "rollback": rolled,
                "unlocked": True}, facts
    verified = cast(VerifyOutcome, printed)
    facts = verified.pop("facts", None)
    # its facts taken out; the same command released the lock
    return cast(CheckRecord, {**verified, "unlocked": True}), facts


def audit_node(state: State, host: Host, ctx: AgentContext, check: Check) -> bool:
    """Collect facts, write this host's part of the run record, release the lock; False (the
    host fails) when verify failed. A rollback the node refused (``--with-state`` without a
    snapshot: nothing changed) is ``failed`` in the record with the node's reason, and
    pyinfra's host is not failed: the console says the node's reason, not pyinfra's "No
    hosts remaining!"."""
    verify, printed = check_result(ctx, check)
    facts = printed or host.get_fact(
        AgentAudit, nodectl=NODECTL, agent=ctx.name, unit=ctx.unit,
        port=ctx.agent.gateway_port, login_user=ctx.agent.ssh_user)
    rollback: RollbackOutcome = verify.get("rollback") or {}
    status: HostStatus = ("ok" if verify.get("ok") else
                          "rolled_back" if rollback.get("healthy") else "failed")
    changed = [*ctx.changed(), *rollback_changes(rollback)]
    refused = ctx.rollback and rollback.get("rolled_back") is False
    # ``fleet rollback`` expects the release it rolled back to (the node's own word), or the
    # one the node stays on when it refused; a deploy the release it brings
    expected = (rollback.get("release") or facts.get("release") or "?") if ctx.rollback \
        else ctx.release.id
    found = drift(facts, ctx, expected)
    entry: HostRecord = {
        "status": status,
        "expected_release": expected,
        "release": facts.get("release"),
        "soul_sha256": facts.get("soul_sha256"),
        "config_hash": facts.get("config_hash"),
        "changed": changed,
        "restarted": bool(rollback.get("restarted")) or any(
            op.is_complete() and op.did_change() for op in check.service_ops),
        "verify": verify,
        "facts": facts,
        "drift": found,
        "operations": ctx.operations,
        "finished": utc_timestamp(),
    }
    if refused:
        entry["reason"] = rollback.get("reason") or "the node did not roll back"
    update_host(current_run_id(), host.name, entry, ctx.masker)
    send_recorded(host.name)  # the controller reads the record now
    if not verify.get("unlocked"):
        lock.release_now(host)
    host.log(f"audit: {status}, {len(changed)} operation(s) changed, "
             f"{len(found)} drift(s)", logger.info)
    if status == "ok":
        return True
    if refused:  # nothing changed: the run fails by its record, pyinfra's host goes on
        host.log_styled(f"{host.name}: not rolled back: {entry['reason']}", fg="red",
                        log_func=logger.error)
        return True
    reason = "; ".join(verify.get("problems", [])) or "health check failed"
    if env_changed(check):
        reason += ("; this deploy changed the agent's environment (secrets in "
                   f"{ctx.secrets.path or '$FLEET_SECRETS'}): check them")
    if status == "rolled_back":
        restored = " and its previous environment" if rollback.get("env_restored") else ""
        message = (f"{host.name}: verify failed ({reason}); rolled back to release "
                   f"{rollback['release']}{restored}, which is healthy")
    else:
        back = rollback.get("release") or facts.get("release")
        why = "; ".join(rollback.get("problems", [])) or rollback.get("reason", "")
        message = (f"{host.name}: verify failed ({reason}); rollback did not recover it "
                   f"(now on {back}: {why})")
    host.log_styled(message, fg="red", log_func=logger.error)
    return False


def rollback_changes(rollback: RollbackOutcome) -> list[str]:
    """What a rollback (``fleet-nodectl``'s JSON) changed on the node, as operation names."""
    changes = []
    if rollback.get("release") and rollback.get("from") not in (None, rollback["release"]):
        changes.append(f"Rollback | current release switched back to {rollback['release']}")
    if rollback.get("env_restored"):  # with the state: the one kept with its snapshot
        source = (f"snapshot {rollback['state_restored']}" if rollback.get("state_restored")
                  else "env.previous")
        changes.append(f"Rollback | agent environment restored from {source}")
    if rollback.get("state_restored"):
        changes.append(f"Rollback | agent state restored from snapshot "
                       f"{rollback['state_restored']}")
    if rollback.get("restarted"):
        changes.append("Rollback | agent service restarted")
    return changes


def env_changed(check: Check) -> bool:
    """Whether this deploy changed the agent's environment (its secrets)."""
    op = check.env_write
    return op is not None and op.is_complete() and op.did_change()


def failed_operation(ctx: AgentContext) -> str:
    """The name of the tracked operation that failed the host: the first one not complete
    (operations run in order; pyinfra stops a host at its first failure)."""
    return next((name for name, op in ctx.changes if not op.is_complete()),
                "an operation of this deploy")


class FailureRecorder(BaseStateCallback):
    """Records a host that an operation failed before verify (its restart, an upload, ...):
    ``failed``, naming the operation and what had changed, instead of no record at all (read
    as unreachable)."""

    @staticmethod
    def operation_host_error(state: State, host: Host, op_hash: Any, retry_count: int = 0,
                             max_retries: int = 0) -> None:
        ctx = context_of(str(host.data.get("agent_name")))
        if ctx is None:
            return  # not an agent's deploy
        try:
            entry = load_record(current_run_id()).get("hosts", {}).get(host.name, {})
        except FileNotFoundError:
            entry = {}
        if not entry.get("status"):  # else preflight, the gate or the audit recorded it
            name = failed_operation(ctx)
            update_host(current_run_id(), host.name, {
                "status": "failed", "phase": name.split(" | ", 1)[0].lower() if " | " in name
                else "", "reason": f"operation failed: {name} (the node was reached; see the "
                                   "pyinfra output of this stage)",
                "changed": ctx.changed(), "restarted": False, "finished": utc_timestamp()},
                ctx.masker)
        send_recorded(host.name)  # final now (a failed preflight too): the controller looks


_recording = False


def record_failures() -> None:
    """Have this pyinfra process record hosts an operation fails (:class:`FailureRecorder`),
    once."""
    global _recording
    if not _recording:
        state.add_callback_handler(FailureRecorder())
        _recording = True


@operation(is_idempotent=False)
def agent_audited(ctx: AgentContext, check: Check):
    """
    Record what the node runs (release, hashes, unit, ports, keys, sudoers), the operations
    that changed on it and every drift from the registry in the run record; release the deploy
    lock if verify did not; fail the host when its verify failed. A check, not a change: at
    plan time (a dry run) it does nothing.

    + ctx: the agent's deploy context (the operations it ran)
    + check: the host's verify (or rollback) and what the audit reports with it

    **Example:**

    .. code:: python

        agent_audited(name="Audit", ctx=ctx, check=check)
    """
    if not state.is_executing:
        host.noop("the audit runs when the deploy runs")
        return
    yield FunctionCommand(audit_node, (ctx, check), {})


@phase("Audit")
def run(ctx: AgentContext, check: Check) -> None:
    """Record the node's real state and drift; release the lock; fail a rolled-back host. At
    plan time (when pyinfra plans first), the record gets the names of this host's operations
    that would change."""
    if state.check_for_changes:  # planning first (a dry run, or pyinfra without -y)
        update_host(current_run_id(), host.name, {"planned": ctx.planned()})
    ctx.check(agent_audited, AUDIT, ctx=ctx, check=check)
