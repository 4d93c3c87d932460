"""Phase 8, audit: what the node really runs, compared with the registry, in the run record.

Per host: release, soul and config hashes, unit state, listening ports, authorized key
fingerprints, sudoers lines; the operations that changed, whether the service restarted,
the verify outcome; and every drift from what the registry says. Then the node's deploy lock
is released, and a host whose verify failed is failed here, naming the reason and the release
it is back on.
"""

from __future__ import annotations

from typing import Any

from pyinfra import logger
from pyinfra.api import State, StringCommand
from pyinfra.api.host import Host
from pyinfra.operations import python

from deploys.context import LOCK_DIR, NODECTL, AgentContext, lock_owner, phase, secrets
from deploys.facts import AgentAudit
from fleet.masking import Masker
from fleet.nodectl import fingerprint
from fleet.records import current_run_id, now, update_host


def drift(facts: dict[str, Any], ctx: AgentContext, expected_release: str) -> list[str]:
    """Every difference between the node (``facts``) and the registry/release wanted."""
    found = []
    agent = ctx.agent
    if facts.get("release") != expected_release:
        found.append(f"release is {facts.get('release')}, expected {expected_release}")
    if facts.get("soul_sha256") != ctx.soul_sha256():
        found.append("soul.md differs from the registry's soul file")
    if facts.get("config_hash") != ctx.config_hash():
        found.append("config.json differs from the registry")
    unit = facts.get("unit", {})
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
        f"/etc/fleet/{agent.name}/env": ("0600", agent.name),
        f"/etc/fleet/{agent.name}/soul.md": ("0444", "root"),
        f"/var/lib/fleet/{agent.name}": ("0700", agent.name),
    }
    files = facts.get("files", {})
    for path, (mode, owner) in wanted.items():
        info = files.get(path)
        if not info:
            found.append(f"{path} is missing")
        elif (info["mode"], info["user"]) != (mode, owner):
            found.append(f"{path} is {info['mode']} {info['user']}, expected {mode} {owner}")
    return found


def changed_operations(state: State, host: Host, ctx: AgentContext) -> list[str]:
    """Names of the state-changing operations that changed something on this host."""
    checks = {id(op) for op in ctx.check_ops}
    changed = []
    for op_hash, op_data in state.ops[host].items():
        meta = op_data.operation_meta
        if id(meta) in checks or not meta.is_complete() or not meta.did_change():
            continue
        changed.extend(sorted(state.op_meta[op_hash].names))
    return changed


def audit_node(state: State, host: Host, ctx: AgentContext) -> bool:
    """Collect facts, write this host's part of the run record, release the lock; False (the
    host fails) when verify failed."""
    verify = dict(ctx.verify_result)
    facts = verify.pop("facts", None) or host.get_fact(
        AgentAudit, nodectl=NODECTL, agent=ctx.name, unit=ctx.unit,
        port=ctx.agent.gateway_port, login_user=ctx.agent.ssh_user)
    rollback = verify.get("rollback") or {}
    status = "ok" if verify.get("ok") else "rolled_back" if rollback.get("healthy") else "failed"
    entry = {
        "status": status,
        "expected_release": ctx.release.id,
        "release": facts.get("release"),
        "soul_sha256": facts.get("soul_sha256"),
        "config_hash": facts.get("config_hash"),
        "changed": changed_operations(state, host, ctx),
        "restarted": any(op.is_complete() and op.did_change() for op in ctx.service_ops),
        "verify": verify,
        "facts": facts,
        "drift": drift(facts, ctx, ctx.release.id),
        "finished": now(),
    }
    update_host(current_run_id(), host.name, entry, Masker(secrets().values()))
    if not verify.get("unlocked"):
        host.run_shell_command(StringCommand(
            f"[ \"$(cut -d' ' -f1 {LOCK_DIR}/owner 2>/dev/null)\" = '{lock_owner()}' ] && "
            f"rm -rf {LOCK_DIR}; true"))
    if status == "ok":
        return True
    reason = "; ".join(verify.get("problems", [])) or "health check failed"
    if status == "rolled_back":
        message = (f"{host.name}: verify failed ({reason}); rolled back to release "
                   f"{rollback['release']}, which is healthy")
    else:
        back = rollback.get("release") or facts.get("release")
        why = "; ".join(rollback.get("problems", [])) or rollback.get("reason", "")
        message = (f"{host.name}: verify failed ({reason}); rollback did not recover it "
                   f"(now on {back}: {why})")
    host.log_styled(message, fg="red", log_func=logger.error)
    return False


@phase("Audit")
def run(ctx: AgentContext) -> None:
    """Record the node's real state and drift; release the lock; fail a rolled-back host."""
    ctx.check_ops.append(python.call(
        name=f"Audit {ctx.name}: record state and drift, release the lock",
        function=audit_node, ctx=ctx))
