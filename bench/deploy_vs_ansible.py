"""Our deploy side by side with the same end state in Ansible (plain, then with Mitogen).

    python bench/deploy_vs_ansible.py [--sizes 3 20 50] [--rounds 3] [--lab bench]
                                      [--tools fleet ansible mitogen] [--rev HEAD]

For each size N, each round runs every tool on a fresh lab of N nodes: ``fleet deploy`` cold
then again with nothing to change; ``ansible-playbook bench/ansible/site.yml`` cold then
again; the same with the Mitogen strategy. Everything deploys a clean clone of ``--rev`` and
the same release artifact (``fleet.control.release.build_release``, built before any timing). After
each tool's runs the lab must be equivalent to our deploy (``fleet status``: every agent ok
on the release with the registry's soul and config hashes; ``fleet drift``: our deploy would
change nothing; in the first round of a size also ``fleet test``, the ``tests/live`` suite),
and a second Ansible run must report changed=0 on every host. With the first round's lab
still up, the floor (``bench/floor.py``) is measured. Per run: wall time, CPU time and peak
RSS of the controller (the tool's process tree, from ``wait4``), and the load average.

Results merge into ``bench/results/deploy_vs_ansible.json`` (per size, so sizes can be run
separately) and ``.md`` is rewritten from it. Ansible lives in its own virtualenv
(``$FLEET_BENCH_ANSIBLE_VENV``, default ``/var/cache/sovereign-fleet/bench-ansible-venv``),
created from PyPI the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import floor  # noqa: E402
from bench._common import (  # noqa: E402
    QUIET_BUSY,
    Measured,
    clone,
    equivalence_problems,
    fleet_command,
    fleet_env,
    run_measured,
    settle,
    stock_python,
)
from bench.ansible import tool  # noqa: E402
from bus.timestamps import utc_timestamp  # noqa: E402

TOOLS = ("fleet", "ansible", "mitogen")
RESULTS = REPO / "bench" / "results"
REGISTRY_RE = re.compile(r"export FLEET_REGISTRY=(\S+)")
NO_CHANGE_OVER = {"ansible": {3: 15.0, 20: 15.0, 50: 15.0}, "mitogen": {20: 8.0, 50: 8.0}}
"""Issue 24's targets: ours at least this many times faster with nothing to change, by size."""
FLOOR_TARGET = {3: 1.5, 20: 2.0, 50: 2.0}  # no-change: at most this multiple of the floor
MINIMUM_TARGET = {3: 1.3, 20: 1.3}  # cold: at most this multiple of the equal-work minimum


class BenchError(RuntimeError):
    """A run failed or left the lab not equivalent to our deploy."""


def lab_up(checkout: Path, lab: str, nodes: int) -> Path:
    """A fresh lab of ``nodes`` nodes (``fleet lab up`` of the clone); its registry."""
    lab_down(checkout, lab)
    done = subprocess.run(fleet_command("--registry", str(checkout / "registry.yaml"), "lab",
                                        "up", "-n", str(nodes), "--lab", lab),
                          cwd=checkout, env=fleet_env(checkout, checkout / "registry.yaml"),
                          capture_output=True, text=True, check=False)
    match = REGISTRY_RE.search(done.stdout + done.stderr)
    if done.returncode != 0 or not match:
        raise BenchError(f"fleet lab up failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    return Path(match[1])


def lab_down(checkout: Path, lab: str) -> None:
    subprocess.run(fleet_command("lab", "down", "--lab", lab), cwd=checkout,
                   env=fleet_env(checkout, checkout / "registry.yaml"), check=True,
                   capture_output=True)


def sample(measured: Measured, load: float) -> dict[str, float]:
    return {"wall_s": round(measured.wall, 3), "cpu_s": round(measured.cpu, 3),
            "max_rss_mib": round(measured.max_rss_mib, 1), "load_before": round(load, 2)}


def run_tool(name: str, checkout: Path, registry: Path, work: Path, release: str,
             venv: Path | None, live: bool) -> dict[str, Any]:
    """Cold and no-change run of one tool on the (fresh) lab, then the equivalence checks."""
    runs: dict[str, Any] = {}
    if name == "fleet":
        command, env = fleet_command("deploy"), fleet_env(checkout, registry)
        records = checkout / "records"
    else:
        assert venv is not None
        inventory = tool.generate_inventory(checkout, registry, work / "inventory")
        control = Path(tempfile.mkdtemp(prefix="cp-", dir=work))
        (control / "tmp").mkdir()
        command, env = tool.playbook_command(venv, inventory, name == "mitogen", control)
    env = stock_python(env)
    try:
        for phase in ("cold", "no_change"):
            waited, busy = settle()  # the nodes' agents just started (or were just deployed)
            load = os.getloadavg()[0]
            measured = run_measured(command, env, checkout, work / f"{name}-{phase}.log")
            if measured.returncode != 0:
                raise BenchError(f"{name} {phase} failed (exit {measured.returncode}), see "
                                 f"{measured.log}:\n{measured.output()[-3000:]}")
            runs[phase] = {**sample(measured, load), "settled_s": waited, "busy_before": busy}
            if name == "fleet":
                runs[phase]["operations"] = planned_operations(records)
            if name != "fleet":
                counts = tool.recap(measured.output())
                runs[phase]["changed"] = sum(host["changed"] for host in counts.values())
                if phase == "no_change" and (not counts or runs[phase]["changed"]):
                    raise BenchError(f"{name}: the second run changed something: {counts}")
    finally:
        if name != "fleet":
            tool.close_masters(control)
    problems = equivalence_problems(checkout, registry, release, live=live)
    if problems:
        raise BenchError(f"after {name}, the lab is not as our deploy leaves it:\n"
                         + "\n".join(problems))
    runs["checks"] = "status ok, drift none" + (", tests/live passed" if live else "")
    return runs


def planned_operations(records: Path) -> dict[str, int]:
    """Operations pyinfra planned per host in the newest run record (the audit records them)."""
    newest = max(records.glob("*.json"), key=lambda path: path.name)
    hosts = json.loads(newest.read_text()).get("hosts", {})
    return {name: entry["operations"] for name, entry in sorted(hosts.items())
            if isinstance(entry.get("operations"), int)}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summarize(size: dict[str, Any]) -> dict[str, Any]:
    """Medians, ranges, per-node seconds and ratios (tool / ours) of one size's rounds."""
    summary: dict[str, Any] = {}
    for name, rounds in size["runs"].items():
        entry: dict[str, Any] = {}
        for phase in ("cold", "no_change"):
            entry[phase] = {key: stats([r[phase][key] for r in rounds])
                            for key in ("wall_s", "cpu_s", "max_rss_mib", "load_before")}
            entry[phase]["s_per_node"] = round(entry[phase]["wall_s"]["median"]
                                               / size["nodes"], 3)
            counts = [count for r in rounds for count in r[phase].get("operations", {}).values()]
            if counts:  # per host, over every host of every round
                entry[phase]["operations_per_host"] = stats([float(c) for c in counts])
        summary[name] = entry
    ours = summary.get("fleet")
    for name, entry in summary.items():
        if ours and name != "fleet":
            entry["ratio"] = {phase: round(entry[phase]["wall_s"]["median"]
                                           / ours[phase]["wall_s"]["median"], 2)
                              for phase in ("cold", "no_change")}
    floors = [(r["no_change"]["wall_s"], r["floor"]["floor_s"])
              for r in size["runs"].get("fleet", []) if "floor" in r]
    if floors:  # each round's no-change run over the floor measured right after it
        summary["floor_s"] = stats([floor_s for _, floor_s in floors])
        summary["floor_multiple"] = round(statistics.median(
            wall / floor_s for wall, floor_s in floors), 2)
    elif ours and size.get("floor"):
        summary["floor_multiple"] = round(ours["no_change"]["wall_s"]["median"]
                                          / size["floor"]["floor_s"], 2)
    minima = [r["floor"]["minimum_s"] for r in size["runs"].get("fleet", [])
              if "minimum_s" in r.get("floor", {})]
    if minima:  # the equal-work minimum of a cold deploy; each tool's cold time over it
        summary["minimum_s"] = stats(minima)
        for name in size["runs"]:
            summary[name]["cold"]["minimum_multiple"] = round(
                summary[name]["cold"]["wall_s"]["median"] / summary["minimum_s"]["median"], 2)
    return summary


def versions(venv: Path | None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    from importlib import metadata

    found["pyinfra"] = metadata.version("pyinfra")
    if venv:
        listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"],
                                capture_output=True, text=True, check=False).stdout
        for package in json.loads(listed or "[]"):
            if package["name"] in ("ansible-core", "mitogen"):
                found[package["name"]] = package["version"]
    return found


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "kernel": platform.release(),
            "lab": "systemd-nspawn nodes (Debian 12), one per agent, on this machine"}


def fmt(entry: dict[str, float], unit: str = "s") -> str:
    return f"{entry['median']:.2f} {unit} ({entry['min']:.2f}-{entry['max']:.2f})"


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown: one table per size, the targets, the floor."""
    lines = ["# Our deploy vs Ansible (same end state, same lab)", "",
             f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, "
             f"{data['machine']['memory_gib']} GiB; {data['machine']['lab']}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in data["versions"].items()) + ".", "",
             "Each round: a fresh lab per tool, a cold run, then a run with nothing to change. "
             "Median (min-max) wall seconds; CPU = user+sys seconds of the controller's process "
             "tree; RSS = peak resident set of its largest process; load = 1-min load average "
             "before the run (2 cores shared with the lab's nodes and other work).", ""]
    for nodes, size in sorted(data["sizes"].items(), key=lambda item: int(item[0])):
        summary = size["summary"]
        lines += [f"## {nodes} nodes ({len(size['runs'].get('fleet', []))} rounds)", "",
                  f"Release {size['release']}, measured {size.get('finished', '?')[:10]}"
                  + (f" with `{size['command']}`" if size.get("command") else "") + ".", "",
                  "| tool | cold | no-change | cold CPU | no-change CPU | peak RSS | "
                  "s/node cold | x ours cold | x ours no-change |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in TOOLS:
            if name not in summary:
                continue
            entry = summary[name]
            ratio = entry.get("ratio", {})
            lines.append(
                f"| {name} | {fmt(entry['cold']['wall_s'])} | "
                f"{fmt(entry['no_change']['wall_s'])} | "
                f"{entry['cold']['cpu_s']['median']:.2f} s | "
                f"{entry['no_change']['cpu_s']['median']:.2f} s | "
                f"{entry['cold']['max_rss_mib']['max']:.0f} MiB | "
                f"{entry['cold']['s_per_node']:.2f} | "
                f"{ratio.get('cold', 1.0):.1f}x | {ratio.get('no_change', 1.0):.1f}x |")
        if size.get("floor"):
            floor_ = size["floor"]
            floor_s = summary.get("floor_s", {}).get("median", floor_["floor_s"])
            lines += ["", f"Floor ({nodes} hosts): {floor_s:.2f} s (interpreter + "
                      f"pyinfra imports {floor_['imports_s']:.2f} s, bare interpreter "
                      f"{floor_['interpreter_s']:.3f} s; OpenSSH `ssh HOST true` to all in "
                      f"parallel {floor_['openssh_parallel_s']:.2f} s); our no-change deploy "
                      f"is {summary.get('floor_multiple', 0):.2f}x the floor (median over "
                      "rounds of the no-change run over the floor measured right after it; "
                      "the parts are from round 1)."]
            if "minimum_s" in summary:
                windows = " + ".join(f"{w:g}" for w in floor_.get("stage_windows_s", []))
                lines += ["", f"Equal-work minimum of a cold deploy: "
                          f"{summary['minimum_s']['median']:.2f} s (the floor, the stages' "
                          f"stability windows {windows} s, and moving the "
                          f"{floor_.get('release_mb', 0):.0f} MB release to every host and "
                          f"unpacking it {floor_.get('transfer_s', 0):.2f} s); cold runs as a "
                          "multiple of it: " + ", ".join(
                              f"{name} {summary[name]['cold']['minimum_multiple']:.2f}x"
                              for name in TOOLS if name in summary) + "."]
        ops = summary.get("fleet", {})
        if "operations_per_host" in ops.get("cold", {}):
            lines += ["", "Operations our deploy planned per host (median): cold "
                      f"{ops['cold']['operations_per_host']['median']:.0f}, no-change "
                      f"{ops['no_change']['operations_per_host']['median']:.0f}."]
        earlier = {name: runs[0].get("release", "") for name, runs in size["runs"].items()
                   if runs and runs[0].get("earlier")}
        if earlier:
            lines += ["", "Kept from an earlier run of this bench (not run again): "
                      + ", ".join(f"{name} (release {release})"
                                  for name, release in earlier.items()) + "."]
        loads = [r[p]["load_before"] for runs in size["runs"].values() for r in runs
                 for p in ("cold", "no_change")]
        checks = next(iter(size["runs"].values()))[0]["checks"]
        busy = [r[p]["busy_before"] for runs in size["runs"].values() for r in runs
                for p in ("cold", "no_change") if "busy_before" in r[p]]
        if busy:
            lines += ["", "Each timed run began once the machine was quiet (its CPUs busy at "
                      f"most {QUIET_BUSY:.0%} of two seconds in a row, waiting at most 180 s): "
                      f"busy {min(busy):.0%}-{max(busy):.0%} in the second before."]
        lines += ["", f"Load average before runs: {min(loads):.1f}-{max(loads):.1f}. Checks "
                  f"after each tool: {checks} (tests/live in round 1); the second Ansible "
                  "run changed=0 on every host.", ""]
    lines += targets(data)
    return "\n".join(lines) + "\n"


def targets(data: dict[str, Any]) -> list[str]:
    """Issue 24's targets, each marked met or not."""
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def row(text: str, got: float, met: bool) -> None:
        lines.append(f"| {text} | {got:.2f}x | {'yes' if met else 'no'} |")

    for nodes, size in sorted(data["sizes"].items(), key=lambda item: int(item[0])):
        summary, count = size["summary"], int(nodes)
        for name, wanted in NO_CHANGE_OVER.items():
            ratio = summary.get(name, {}).get("ratio")
            if ratio and count in wanted:
                row(f"{nodes} nodes: no-change >= {wanted[count]:g}x faster than {name}",
                    ratio["no_change"], ratio["no_change"] >= wanted[count])
        if "floor_multiple" in summary and count in FLOOR_TARGET:
            got = summary["floor_multiple"]
            row(f"{nodes} nodes: no-change <= {FLOOR_TARGET[count]:g}x the floor", got,
                got <= FLOOR_TARGET[count])
        cold = summary.get("fleet", {}).get("cold", {})
        if "minimum_multiple" in cold and count in MINIMUM_TARGET:
            got = cold["minimum_multiple"]
            row(f"{nodes} nodes: cold <= {MINIMUM_TARGET[count]:g}x the equal-work minimum",
                got, got <= MINIMUM_TARGET[count])
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 20, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--lab", default="bench-av")
    parser.add_argument("--rev", default="HEAD", help="commit to deploy (default: HEAD)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    scratch, checkout = clone(args.rev)
    venv = tool.ensure_venv() if set(args.tools) - {"fleet"} else None
    built = subprocess.run(
        [sys.executable, "-c", "from fleet.control.release import build_release; "
         "from fleet.core.release_marker import Broken; "
         "built = build_release(broken=Broken.NO); print(built.id, built.path)"],
        env={**os.environ, "PYTHONPATH": str(checkout)}, cwd=checkout, capture_output=True,
        text=True, check=True).stdout.split()
    release, tarball = built[0], Path(built[1])
    print(f"release {release}; tools {', '.join(args.tools)}", flush=True)
    path = args.out / "deploy_vs_ansible.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"sizes": {}}
    data.update(machine=machine(), versions=versions(venv),
                command="python bench/deploy_vs_ansible.py " + shlex.join(sys.argv[1:]))
    size: dict[str, Any]
    try:
        for nodes in args.sizes:
            size = {"nodes": nodes, "release": release, "command": data["command"],
                    "runs": {**earlier_runs(data, nodes, args.tools),
                             **{name: [] for name in args.tools}}}
            if "fleet" not in args.tools and data["sizes"].get(str(nodes), {}).get("floor"):
                size["floor"] = data["sizes"][str(nodes)]["floor"]
            for round_ in range(1, args.rounds + 1):
                for name in args.tools:
                    work = Path(scratch.name) / f"{nodes}-{round_}-{name}"
                    work.mkdir()
                    registry = lab_up(checkout, args.lab, nodes)
                    result = run_tool(name, checkout, registry, work, release, venv,
                                      live=round_ == 1)
                    size["runs"][name].append(result)
                    if name == "fleet":  # at the same load as this round's no-change run
                        result["floor"] = floor_of(checkout, registry, tarball)
                        size["floor"] = size.get("floor") or result["floor"]
                    print(f"{nodes} nodes, round {round_}, {name}: cold "
                          f"{result['cold']['wall_s']:.2f} s, no-change "
                          f"{result['no_change']['wall_s']:.2f} s (load "
                          f"{result['cold']['load_before']:.1f})", flush=True)
                save(data, size, path)  # after every round: a cut-short run keeps its rounds
            print(markdown({**data, "sizes": {str(nodes): size}}), flush=True)
    finally:
        lab_down(checkout, args.lab)
        scratch.cleanup()
    return 0


def earlier_runs(data: dict[str, Any], nodes: int, tools: list[str]
                 ) -> dict[str, list[dict[str, Any]]]:
    """The rounds of the tools not run now, kept from the results of an earlier run of this
    size (each marked ``earlier`` with the release it deployed)."""
    before = data["sizes"].get(str(nodes), {})
    return {name: [{**run, "earlier": True, "release": run.get("release", before.get("release"))}
                   for run in runs]
            for name, runs in before.get("runs", {}).items() if name not in tools}


def save(data: dict[str, Any], size: dict[str, Any], path: Path) -> None:
    """Summarize ``size`` (its rounds so far) into ``data``; write the JSON and the Markdown."""
    size["summary"] = summarize(size)
    size["finished"] = utc_timestamp()
    data["sizes"][str(size["nodes"])] = size
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(data))


def floor_of(checkout: Path, registry: Path, tarball: Path) -> dict[str, Any]:
    """The floor and the equal-work minimum, measured in a process with the clone's code
    (``bench/floor.py``)."""
    settle()
    done = subprocess.run([sys.executable, str(Path(floor.__file__)), str(registry),
                           "--release", str(tarball)],
                          env=stock_python({**os.environ, "PYTHONPATH": f"{checkout}:{REPO}"}),
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    sys.exit(main())
