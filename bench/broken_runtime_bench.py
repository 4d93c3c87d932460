"""Benchmark the verdict on an operator runtime that does not work: of N deploys, how many
fail verify naming the agent and the reason.

Brings up a lab of the example registry (its own, ``bench-broken-runtime``), deploys it, then
for each way a custom runtime (``runtime: {command: ...}``) can fail to work
(``tests/runtime/broken_agent.py``: ``exit`` exits at once, ``exit-after-2s`` keeps the
contract for 2 s then exits, ``silent`` never writes its state) runs ``--rounds`` rounds of:
a deploy of the worker with that runtime (it must fail, its record naming the worker's
runtime and why), then a deploy back to the working registry (it must pass), so each broken
deploy starts from a healthy agent. Also asks ``fleet status`` after each broken deploy: the
worker must not be healthy. Takes the lab down at the end. Needs root.

    python bench/broken_runtime_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import clone, fleet_command, fleet_env  # noqa: E402
from fleet import lab  # noqa: E402
from fleet.core.registry import load_registry  # noqa: E402

LAB = "bench-broken-runtime"
WORKER = "bezalel"
MODES = ("exit", "exit-after-2s", "silent")
REASONS = {"exit": ("does not stay up", "restarted during verify"),
           "exit-after-2s": ("does not stay up", "restarted during verify"),
           "silent": ("runtime has written no state file", "runtime is not running",
                      "runtime is stopped")}


def broken_registry(registry: Path, folder: Path, mode: str) -> Path:
    """A copy of the lab ``registry`` in ``folder`` whose worker runs ``broken_agent.py MODE``."""
    data = yaml.safe_load(registry.read_text())
    data["wizards"][WORKER]["runtime"] = {"command": ["python3", "broken.py", mode],
                                          "ship": ["broken.py"]}
    shutil.copytree(registry.parent / "souls", folder / "souls", dirs_exist_ok=True)
    shutil.copy(REPO / "tests/runtime/broken_agent.py", folder / "broken.py")
    edited = folder / "registry.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    return edited


def run(checkout: Path, registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fleet_command(*args), cwd=checkout, env=fleet_env(checkout, registry),
                          capture_output=True, text=True, timeout=900, check=False)


def last_record(checkout: Path) -> dict:
    records = sorted((checkout / "records").glob("*.json"), key=os.path.getmtime)
    return json.loads(records[-1].read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scratch, checkout = clone()
    lab.down(LAB)
    try:
        registry = lab.up(load_registry(REPO / "registry.yaml"), lab=LAB)
        done = run(checkout, registry, "deploy")
        if done.returncode != 0:
            raise SystemExit(f"the first deploy failed:\n{done.stdout[-3000:]}")
        for mode in MODES:
            named, unhealthy = 0, 0
            with tempfile.TemporaryDirectory() as folder:
                broken = broken_registry(registry, Path(folder), mode)
                for round_ in range(args.rounds):
                    done = run(checkout, broken, "deploy", "--limit", WORKER)
                    entry = last_record(checkout)["hosts"][WORKER]
                    problems = " ".join((entry.get("verify") or {}).get("problems", []))
                    ok = done.returncode == 1 and entry.get("status") != "ok" and any(
                        reason in problems for reason in REASONS[mode])
                    named += ok
                    status = run(checkout, broken, "status", "--json")
                    agents = {a["agent"]: a for a in json.loads(status.stdout)["agents"]}
                    unhealthy += agents[WORKER]["healthy"] is False
                    print(f"{mode} round {round_ + 1}: exit {done.returncode}, "
                          f"{entry.get('status')}: {problems[:160]!r}", flush=True)
                    back = run(checkout, registry, "deploy", "--limit", WORKER)
                    if back.returncode != 0:
                        raise SystemExit(f"the deploy back failed:\n{back.stdout[-3000:]}")
            print(f"== {mode}: verify failed naming the runtime and why in {named} of "
                  f"{args.rounds} deploys; status not healthy after {unhealthy} of "
                  f"{args.rounds}", flush=True)
    finally:
        lab.down(LAB)
        scratch.cleanup()


if __name__ == "__main__":
    main()
