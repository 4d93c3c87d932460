"""``fleet deploy``: the canary first, then the workers (all at once or in batches).

A thin layer over the pyinfra CLI: all stages run in one pyinfra process
(``python -m fleet.pyinfra_launcher -y inventory.py deploy.py deploy.py ... --data
rollout=...``, ``deploy.py`` once per stage), so the process starts, connects and plans once.
pyinfra runs every operation of a stage before the next stage's first one, its rollout gate
(``deploys/gate.py``), which lets that stage go on only when no more hosts than
``max_failures`` have failed so far. Afterwards each stage's outcome per host is read from the
run record the audit phase writes. Output is streamed with secrets masked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import DeployError
from fleet.inventory import inventory_groups
from fleet.masking import Masker
from fleet.records import RUN_ID_ENV, load_record, new_run_id, now, update_host, update_run
from fleet.registry import Registry
from fleet.release import build_release, release_env, repo_root
from fleet.secrets import load_secrets

Echo = Callable[[str], None]


@dataclass(frozen=True)
class RolloutOptions:
    """What ``fleet deploy`` was asked to do."""

    dry: bool = False
    diff: bool = False
    limit: tuple[str, ...] = ()
    batch: int | None = None
    max_failures: int = 0


@dataclass
class RolloutResult:
    """The outcome of a rollout: per-host entries of the run record, and the stages run."""

    run_id: str
    status: str
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def select(registry: Registry, limit: Sequence[str]) -> list[str]:
    """Agent names matched by ``limit`` (agent or group names), in registry order."""
    if not limit:
        return list(registry.agents)
    groups = inventory_groups(registry)
    chosen: set[str] = set()
    for name in limit:
        if name in registry.agents:
            chosen.add(name)
        elif name in groups:
            chosen.update(entry[0] for entry in groups[name])
        else:
            known = ", ".join([*registry.agents, *groups])
            raise DeployError(f"--limit {name!r} matches no agent or group (known: {known})",
                              hint="Use an agent name, a role or a capability.")
    return [name for name in registry.agents if name in chosen]


def plan_stages(registry: Registry, names: Sequence[str], batch: int | None) -> list[list[str]]:
    """Canary stage (the orchestrators) then the workers, in batches of ``batch`` if given."""
    canary = [name for name in names if registry.agents[name].role == "orchestrator"]
    workers = [name for name in names if name not in canary]
    size = batch or len(workers) or 1
    stages = [canary] if canary else []
    stages += [workers[index:index + size] for index in range(0, len(workers), size)]
    return stages


def encode_stages(stages: list[list[str]]) -> str:
    """The ``rollout`` host data of ``deploy.py``: ``a|b,c`` (agent names hold no ``|`` or
    ``,``)."""
    return "|".join(",".join(hosts) for hosts in stages)


def decode_stages(value: str) -> list[list[str]]:
    """The stages of a ``rollout`` host data value."""
    return [hosts.split(",") for hosts in str(value).split("|")]


def pyinfra_command(hosts: Sequence[str], options: RolloutOptions,
                    data: Sequence[str] = (), passes: int = 1) -> list[str]:
    """The pyinfra CLI call (``-y`` unless dry: a dry run shows the changes), started through
    :mod:`fleet.pyinfra_launcher` (pyinfra's CLI, quicker to start); ``deploy.py`` is given
    ``passes`` times (once per rollout stage)."""
    command = [sys.executable, "-m", "fleet.pyinfra_launcher", *([] if options.dry else ["-y"]),
               "inventory.py", *["deploy.py"] * passes]
    for name in hosts:
        command += ["--limit", name]
    for item in data:
        command += ["--data", item]
    if options.dry:
        command.append("--dry")
    if options.diff:
        command.append("--diff")
    return command


def run_stage(command: list[str], env: dict[str, str], masker: Masker, echo: Echo) -> int:
    """Run one pyinfra call from the repo root, streaming its output through the masker; its
    exit code."""
    with subprocess.Popen(command, cwd=repo_root(), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        assert process.stdout is not None
        for line in process.stdout:
            echo(masker(line.rstrip("\n")))
    return process.returncode


def stage_env(registry: Registry, run_id: str, extra: dict[str, str]) -> dict[str, str]:
    """Environment of the pyinfra child: this registry, run id, prebuilt release."""
    env = dict(os.environ)
    env.update({"FLEET_REGISTRY": str(registry.path.resolve()), RUN_ID_ENV: run_id,
                "PYINFRA_PROGRESS": "off", **extra})
    return env


def stage_outcome(run_id: str, hosts: Sequence[str], code: int, dry: bool) -> dict[str, str]:
    """Status per host of one stage, from the run record (hosts without an entry failed)."""
    if dry:
        return {name: "planned" if code == 0 else "failed" for name in hosts}
    try:
        entries = load_record(run_id).get("hosts", {})
    except FileNotFoundError:
        entries = {}
    outcome = {}
    for name in hosts:
        status = entries.get(name, {}).get("status")
        if status is None:
            status = "failed"
            update_host(run_id, name, {"status": status, "reason": (
                "no audit record: unreachable over SSH or an operation failed before verify; "
                "see the pyinfra output above")})
        outcome[name] = status
    return outcome


def stage_label(registry: Registry, stages: list[list[str]], index: int) -> str:
    """``canary`` for a first stage of orchestrators, else ``workers``."""
    first = registry.agents[stages[index][0]]
    return "canary" if index == 0 and first.role == "orchestrator" else "workers"


def deploy_fleet(registry: Registry, options: RolloutOptions, echo: Echo) -> RolloutResult:
    """Deploy the selected agents: canary first, then workers; stop past ``max_failures``."""
    masker = Masker(load_secrets().values())
    names = select(registry, options.limit)
    run_id = new_run_id()
    release = build_release()
    env = stage_env(registry, run_id, release_env(release))
    update_run(run_id, kind="deploy", release=release.id, registry=str(registry.path),
               dry=options.dry, limit=list(options.limit), batch=options.batch)
    result = RolloutResult(run_id=run_id, status="ok")
    stages = plan_stages(registry, names, options.batch)
    if not stages:
        update_run(run_id, stages=[], status="ok", finished=now())
        return result
    plan = "; then ".join(f"{stage_label(registry, stages, index)}: {', '.join(hosts)}"
                          for index, hosts in enumerate(stages))
    echo(f"==> {plan} (release {release.id}, run {run_id})")
    data = [] if options.dry else [f"rollout={encode_stages(stages)}",
                                   f"max_failures={options.max_failures}"]
    passes = 1 if options.dry else len(stages)
    code = run_stage(pyinfra_command(names, options, data, passes), env, masker, echo)
    verdicts: dict[str, bool] = {}
    failures = 0
    for index, hosts in enumerate(stages):
        outcome = stage_outcome(run_id, hosts, code, options.dry)
        result.stages.append({"stage": stage_label(registry, stages, index), "hosts": hosts,
                              "exit_code": code, "outcome": outcome})
        failures += sum(status not in ("ok", "planned") for status in outcome.values())
        verdicts[str(index)] = failures <= options.max_failures
        if not verdicts[str(index)]:
            result.status = "failed"
            skipped = [name for stage in stages[index + 1:] for name in stage]
            if skipped:
                echo(f"==> stopped: {failures} host(s) failed (allowed: "
                     f"{options.max_failures}); not deployed: {', '.join(skipped)}")
                update_run(run_id, skipped=skipped)
            break
    if failures and result.status == "ok":
        result.status = "degraded"
    update_run(run_id, stages=result.stages, verdicts=verdicts, status=result.status,
               finished=now())
    if not options.dry:
        result.hosts = load_record(run_id).get("hosts", {})
    return result
