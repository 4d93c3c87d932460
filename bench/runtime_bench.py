"""Benchmark agents that think, on a lab with the real model server: requests answered per
minute across 3 workers, and the latency the fleet adds over calling the model directly.

Brings up a lab of the example registry plus a third worker (an orchestrator and 3
workers) with ``--model``, deploys it (each worker's runtime asks for ``--tokens`` tokens),
then:

- direct: ``--rounds`` chat completions straight to the model server (the baseline);
- one at a time: ``--rounds`` requests from the orchestrator over the bus, each waited for;
  the fleet's added latency is the round trip minus the model call the runtime measured
  (bus delivery both ways, the runtime's inbox long poll, the asker's long poll);
- throughput: ``--burst`` requests spread over the 3 workers at once; answered per minute.

One llama.cpp server answers one completion at a time, so the throughput is bounded by the
model server, not by the number of workers. Takes the lab down at the end. Needs root.

    python bench/runtime_bench.py [--rounds 20] [--burst 30] [--tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import percentile  # noqa: E402
from bus.client import BusClient  # noqa: E402
from fleet import lab  # noqa: E402
from fleet.control.secrets import load_secrets  # noqa: E402
from fleet.core.registry import load_registry  # noqa: E402
from fleet.lab.model import base_url  # noqa: E402
from fleet.lab.network import read_index  # noqa: E402

LAB = "bench-runtime"
PROMPT = "Write one line of Python."


def fleet(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "fleet", *args], cwd=REPO, check=True, env=env,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=16)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    data = yaml.safe_load((REPO / "registry.yaml").read_text())
    third = {**data["wizards"]["allegro"], "host": "203.0.113.40"}  # rewritten by the lab
    third.pop("health_endpoint", None)
    data["wizards"]["carmel"] = third
    for name, entry in data["wizards"].items():
        entry["config"] = {"max_tokens": options.tokens}
        entry["soul"] = f"souls/{name}.md"
    (work / "souls").mkdir()
    for name in data["wizards"]:
        soul = REPO / "souls" / f"{'allegro' if name == 'carmel' else name}.md"
        (work / "souls" / f"{name}.md").write_text(soul.read_text())
    (work / "registry.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    lab_registry = lab.up(load_registry(work / "registry.yaml"), lab=LAB, with_model=True)
    try:
        env = {**os.environ, "FLEET_REGISTRY": str(lab_registry),
               "FLEET_SECRETS": str(work / "secrets.yaml"),
               "FLEET_RECORDS_DIR": str(work / "records")}
        fleet("init", "--secrets-only", "--secrets", str(work / "secrets.yaml"), env=env)
        fleet("deploy", env=env)
        run(lab_registry, work / "secrets.yaml", options)
    finally:
        lab.down(LAB)


def run(lab_registry: Path, secrets: Path, options: argparse.Namespace) -> None:
    registry = load_registry(lab_registry)
    keys = load_secrets(secrets).private_keys()
    workers = [agent.name for agent in registry.by_role("worker")][:3]
    asker = registry.by_role("orchestrator")[0].name
    index = read_index(lab_registry.parent)
    assert index is not None
    url = base_url(index)
    body = {"model": "m", "max_tokens": options.tokens,
            "messages": [{"role": "system", "content": "You are a worker."},
                         {"role": "user", "content": PROMPT}]}
    direct = []
    for _ in range(options.rounds):
        started = time.perf_counter()
        requests.post(f"{url}/chat/completions", json=body, timeout=120).raise_for_status()
        direct.append((time.perf_counter() - started) * 1000)
    added, total = [], []
    with BusClient.for_agent(registry, asker, keys, timeout=30) as client:
        for number in range(options.rounds):
            started = time.perf_counter()
            answer = client.request(workers[number % 3], {"prompt": PROMPT}, timeout=300)
            took = (time.perf_counter() - started) * 1000
            total.append(took)
            added.append(took - answer["payload"]["latency_ms"])
        started = time.perf_counter()
        pending = set()
        for number in range(options.burst):
            correlation = str(uuid.uuid4())
            client.send(workers[number % 3], "request", {"prompt": PROMPT},
                        correlation_id=correlation, reply_to=asker)
            pending.add(correlation)
        while pending:
            page = client.messages(type="response", unacked=1, limit=1000, wait=0.5)
            for message in page["messages"]:
                client.ack(message["from"], message["id"])
                pending.discard(message["correlation_id"])
        burst_s = time.perf_counter() - started
    print(json.dumps({
        "tokens": options.tokens, "rounds": options.rounds, "burst": options.burst,
        "direct_ms_p50": round(statistics.median(direct), 1),
        "bus_round_trip_ms_p50": round(statistics.median(total), 1),
        "fleet_added_ms_p50": round(statistics.median(added), 1),
        "fleet_added_ms_p90": round(percentile(added, 0.9), 1),
        "answered_per_minute_3_workers": round(options.burst / burst_s * 60, 1),
        "load": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
