"""Phase 1, preflight: check the node can take a deploy and take its deploy lock.

Checks (in the same round trip as the node snapshot the later phases decide from):
Debian/Ubuntu with systemd, python3 >= 3.11 and one the release carries compiled modules for
(``fleet.control.release.NODE_PYTHONS``), free disk under /opt,
clock skew, and nobody else's deploy lock (:mod:`deploys.lock`). SSH itself is checked by
pyinfra's connect. A failing node is named with its reasons and gets a single failing
operation, so nothing changes on it.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.operations import server

from deploys import lock, sandbox
from deploys.context import AgentContext, load_node, phase
from deploys.facts import Basics
from deploys.progress import tell
from fleet.control.records import current_run_id, update_host
from fleet.control.release import NODE_PYTHONS

MIN_PYTHON = (3, 11)
MIN_FREE_MB = 200
MAX_SKEW_S = 10.0
SUPPORTED_OS = ("debian", "ubuntu")


@dataclass(frozen=True)
class Preflight:
    """What preflight found: whether the node can take the deploy, and a dead deploy's lock
    that may be taken over ('' if none)."""

    ok: bool
    stale_lock: str = ""
    converged: bool = False  # the phases would change nothing: only verify and audit run


def problems(facts: Basics, owner: str) -> tuple[list[str], str]:
    """(reasons the node cannot be deployed, a stale lock holder that may be taken over)."""
    found = []
    if facts["os"] not in SUPPORTED_OS and not set(facts["os_like"].split()) & {"debian"}:
        found.append(f"OS {facts['os'] or 'unknown'!r} is not Debian or Ubuntu")
    if not facts["systemd"]:
        found.append("systemd is not running (no /run/systemd/system)")
    if not facts["python"]:
        found.append("python3 is missing; install python3 (>= 3.11)")
    elif facts["python"] < MIN_PYTHON:
        version = ".".join(map(str, facts["python"]))
        found.append(f"python3 is {version}, needs >= {'.'.join(map(str, MIN_PYTHON))}")
    elif ".".join(map(str, facts["python"][:2])) not in NODE_PYTHONS:
        version = ".".join(map(str, facts["python"]))
        found.append(f"python3 is {version}: the release carries compiled modules for Python "
                     f"{', '.join(NODE_PYTHONS)} only (Debian 12 or 13, Ubuntu 24.04)")
    if facts["free_mb"] is not None and facts["free_mb"] < MIN_FREE_MB:
        found.append(f"only {facts['free_mb']} MiB free under /opt, needs {MIN_FREE_MB} MiB")
    if facts["skew_s"] is None or abs(facts["skew_s"]) > MAX_SKEW_S:
        skew = "unknown" if facts["skew_s"] is None else f"{facts['skew_s']:+.1f} s"
        found.append(f"clock skew {skew} exceeds {MAX_SKEW_S:.0f} s; sync the node's clock")
    locked, stale = lock.blocker(facts["lock"], owner, time.time())
    if locked:
        found.append(locked)
    return found, stale


@phase("Preflight")
def run(ctx: AgentContext, phases: Callable[[], object] | None) -> Preflight:
    """Read the node's snapshot (``ctx.node``), check the node, probe ``phases`` (the
    deploy's state-changing phases; None for a rollback) on it (:meth:`AgentContext.converged`)
    and, unless they would change nothing, take its lock before the first change (if any); a
    failing operation when the node cannot take the deploy."""
    owner = lock.owner()
    tell(host.name, "preflight")
    load_node(ctx)
    update_host(current_run_id(), host.name, {"reached": True})  # connected, snapshot read
    found, stale = problems(ctx.node["basics"], owner)
    unpinned = sandbox.policy_problem(ctx.registry.work)
    if unpinned:
        found.append(unpinned)
    if found:
        reason = "; ".join(found)
        host.log_styled(f"preflight failed: {reason}", fg="red", log_func=logger.error)
        update_host(current_run_id(), host.name,
                    {"status": "failed", "phase": "preflight", "problems": found})
        ctx.check(server.shell, "Preflight failed (the reason is in the host's lines above)",
                  commands=[f"echo {shlex.quote('preflight: ' + reason)} >&2; exit 1"])
        return Preflight(ok=False)
    if phases is not None and ctx.converged(phases):  # nothing to change: verify takes the
        return Preflight(ok=True, stale_lock=stale, converged=True)  # lock in its command
    # Only when an operation will change the node (known once every phase has planned,
    # :meth:`AgentContext.finish_plan`): a no-change deploy takes the lock in verify's command
    # instead, one SSH command (about 3 round trips) fewer per host.
    ctx.check(lock.lock_taken, "Take the node's deploy lock", owner=owner, stale_owner=stale,
              _if=lambda: ctx.will_change)
    return Preflight(ok=True, stale_lock=stale)
