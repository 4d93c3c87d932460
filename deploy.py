"""The fleet deploy: takes a bare Debian node to a running, verified agent.

    pyinfra -y inventory.py deploy.py                 # deploy (FLEET_REGISTRY picks the registry)
    pyinfra inventory.py deploy.py --dry --diff       # show what would change, secrets masked
    fleet deploy [--batch N]                          # canary first, then the workers

Phases, in order (``deploys/``): preflight, baseline, release, soul, keys, services, verify,
audit. A second run with nothing changed changes and restarts nothing.

``fleet deploy`` runs its stages in one pyinfra process: ``deploy.py`` once per stage and
``--data rollout=CANARY|WORKER,WORKER|...`` (see ``deploys/gate.py``).

``--data action=rollback`` (used by ``fleet rollback``) runs preflight, rollback, audit only;
``--data rollback_to=RELEASE`` picks the release (default: the previous one).

Test hook: ``FLEET_BROKEN_RELEASE=1`` builds a release whose /health fails, so verify rolls the
node back (see ``fleet/release.py``).
"""

from pyinfra import host, state

from deploys import (
    audit,
    baseline,
    gate,
    keys,
    preflight,
    release,
    rollback,
    services,
    soul,
    verify,
)
from deploys.context import agent_context

ctx = agent_context()
stage = gate.stage_of(host)  # fleet deploy gives this file once per rollout stage
this_pass = state.current_op_file_number
if stage is not None and this_pass:  # every host meets each later stage's gate, in order
    gate.run(ctx, this_pass, host.data.rollout, int(host.data.get("max_failures") or 0))
if stage is None or stage == this_pass:  # this host's pass
    preflight.run(ctx)  # also reads the node's snapshot (ctx.node) the phases decide from
    if ctx.preflight_ok and host.data.get("action") == "rollback":
        rollback.run(ctx, host.data.get("rollback_to"))
        audit.run(ctx)
    elif ctx.preflight_ok:
        baseline.run(ctx)
        release.run(ctx)
        soul.run(ctx)
        keys.run(ctx)
        services.run(ctx)
        verify.run(ctx)
        audit.run(ctx)
