"""The fleet deploy: takes a bare Debian node to a running, verified agent.

    pyinfra -y inventory.py deploy.py                 # deploy (FLEET_REGISTRY picks the registry)
    pyinfra inventory.py deploy.py --dry --diff       # show what would change, secrets masked
    fleet deploy [--batch N]                          # canary first, then the workers

Phases, in order (``deploys/``): preflight, in a later rollout stage pre-stage (with
``fleet.prestage``) and the rollout gate, then baseline, release, soul, keys, services, sandbox
(the agent's test sandbox), webhook (the deploy webhook receiver, on the agent with that
capability), verify, audit. A second run
with nothing changed changes and restarts nothing. Each phase returns what a later one needs
(the operations whose change restarts the agent, verify's check for the audit); the lines
below hand it on.

A host whose snapshot (read once, in preflight) shows every phase's work already done plans
only its checks, verify and audit (no lock operation, no rollout gate: verify's command takes
the lock): preflight first runs the phases as a probe that decides each operation from the
snapshot and plans none (:meth:`deploys.context.AgentContext.converged`). A host with
something to change gets every phase, as planned the first time.

``fleet deploy`` runs one pyinfra process per rollout stage (``--limit`` its hosts,
``--data rollout_stage=N``); a later stage waits at its gate for the earlier stages' verdict
(see ``deploys/gate.py``), after preflight. With ``fleet.prestage`` (or ``fleet deploy
--prestage``, passed as ``--data prestage=true``) a later stage's hosts get the release
uploaded and unpacked before the gate, while the earlier stages deploy; nothing the agent uses
changes before it (``deploys.release.prestage``). Plain ``pyinfra inventory.py deploy.py``
deploys all hosts at once, with no canary.

``--data action=rollback`` (used by ``fleet rollback``) runs preflight, rollback, audit only;
``--data rollback_to=RELEASE`` picks the release (default: the previous one);
``--data rollback_with_state=true`` restores the agent's state snapshot taken before the
release being rolled back.

Test hook: ``FLEET_BROKEN_RELEASE=1`` builds a release whose /health fails, so verify rolls the
node back (see ``fleet/control/release.py``).
"""

from pyinfra import host

from deploys import (
    audit,
    baseline,
    gate,
    keys,
    preflight,
    progress,
    release,
    rollback,
    sandbox,
    services,
    soul,
    verify,
    webhook,
)
from deploys.context import agent_context, name_as_module
from deploys.ops import UNCHANGED, Outcome

name_as_module(__file__)  # pyinfra's walk of the call stack at each operation: see there
ctx = agent_context()


def changes() -> tuple[Outcome, list[Outcome]]:
    """The phases that change the node; their environment write and service operations."""
    baseline.run(ctx)
    release_writes = release.run(ctx)  # the switch, registry copy and config: they restart it
    soul_write = soul.run(ctx)
    env_write = keys.run(ctx)
    service_ops = services.run(ctx, restart_on=[*release_writes, soul_write, env_write],
                               env_write=env_write)
    sandbox.run(ctx, ctx.registry.work)  # the sandbox: policy (the registry's test command
    # and forge allowlist), socket and front door; restarts no agent, so it comes after
    # the agent's (re)start: verify's stability window runs while it is set up
    webhook.run(ctx)  # the deploy webhook receiver, where the registry puts it
    return env_write, service_ops


audit.record_failures()  # a host an operation fails is recorded, naming the operation
progress.report_phases()  # under `fleet deploy`: each host's phase, for its live view
ready = preflight.run(ctx, None if ctx.rollback else changes)  # reads the node's snapshot
# (ctx.node) the phases decide from, fails a node that cannot take the deploy, probes the
# phases on it (converged: only its checks are planned) and, when the host changes, takes
# its deploy lock
release.prestage(ctx, ready)  # with fleet.prestage, in a later stage: the release unpacked
gate.run(ctx, ready)  # in a later stage of `fleet deploy`: wait for the earlier stages' verdict
if ready.ok and ctx.rollback:
    check = rollback.run(ctx, ready, host.data.get("rollback_to"),
                         with_state=bool(host.data.get("rollback_with_state")))
    audit.run(ctx, check)
elif ready.ok:
    # pyinfra orders operations by the line numbers of their calls: every phase's operation
    # is planned from this line, before verify's
    env_write, service_ops = (UNCHANGED, []) if ready.converged else changes()
    check = verify.run(ctx, ready, env_write, service_ops)
    audit.run(ctx, check)
ctx.finish_plan()  # whether this host changes at all: the gate and the lock run only then
