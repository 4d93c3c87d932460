"""``fleet rollback NAME [--to RELEASE]``: point an agent back at an earlier release.

Runs the deploy file with ``--data action=rollback`` on that one host: preflight (lock),
``fleet-nodectl rollback`` (switch ``current``, restart, verify), audit (run record). The
agent's state dir is never touched.
"""

from __future__ import annotations

from fleet.masking import Masker
from fleet.records import load_record, new_run_id, now, update_run
from fleet.registry import Registry
from fleet.rollout import (
    Echo,
    RolloutOptions,
    pyinfra_command,
    run_stage,
    stage_env,
    stage_outcome,
)
from fleet.secrets import load_secrets


def rollback_agent(registry: Registry, name: str, to: str | None, echo: Echo) -> dict:
    """Roll agent ``name`` back (to ``to`` or its previous release); return its record entry."""
    registry.get(name)  # RegistryError naming the known agents
    run_id = new_run_id()
    update_run(run_id, kind="rollback", agent=name, to=to, registry=str(registry.path))
    data = ["action=rollback"] + ([f"rollback_to={to}"] if to else [])
    command = pyinfra_command([name], RolloutOptions(), data)
    code = run_stage(command, stage_env(registry, run_id, {}), Masker(load_secrets().values()),
                     echo)
    status = stage_outcome(run_id, [name], code, dry=False)[name]
    update_run(run_id, status="ok" if status == "ok" else "failed", finished=now())
    entry: dict = load_record(run_id)["hosts"][name]
    entry["run_id"] = run_id
    return entry
