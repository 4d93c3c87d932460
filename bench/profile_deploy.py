"""Where a no-change ``fleet deploy`` spends its time: py-spy (from PyPI, in the bench's own
virtualenv) samples the controller and every pyinfra process it starts.

    python bench/profile_deploy.py REGISTRY [--checkout DIR] [--out bench/results]

Deploy once before (so the run changes nothing). Writes ``deploy_profile.txt`` (collapsed
stacks, py-spy's raw format, for flamegraph tools) and prints, per process, the sampled
seconds inside each of the top frames (inclusive) and the idle share (waiting on SSH or a
child).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import fleet_command, fleet_env  # noqa: E402
from bench.ansible.tool import venv_path  # noqa: E402

RATE = 250  # samples per second
# py-spy raw lines: "process 123:"python -c ..."";frame (file:line);frame ... COUNT"
LINE_RE = re.compile(r"(?P<stack>.+) (?P<count>\d+)")
FRAME_RE = re.compile(r"(?P<func>[^;(]+) \((?P<file>[^:;)]+)(?::\d+)?\)")


def ensure_py_spy() -> Path:
    """py-spy in the bench's venv (installed from PyPI when missing)."""
    binary = venv_path() / "bin" / "py-spy"
    if not binary.exists():
        subprocess.run([str(venv_path() / "bin" / "pip"), "install", "-q", "py-spy"],
                       check=True)
    return binary


def summarize(raw: str, top: int = 25) -> str:
    """Inclusive sampled seconds of the top frames (module:function), all processes."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        match = LINE_RE.fullmatch(line.strip())
        if not match:
            continue
        count = int(match["count"])
        total += count
        seen = set()
        for frame in FRAME_RE.finditer(match["stack"]):
            module = frame["file"].rsplit("site-packages/", 1)[-1].rsplit("/repo/", 1)[-1]
            key = f"{module}:{frame['func'].strip()}"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
    lines = [f"{total / RATE:.2f} s sampled (all processes, idle included)"]
    lines += [f"{count / RATE:7.2f} s  {key}" for key, count in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry", type=Path)
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    raw = args.out / "deploy_profile.txt"
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ensure_py_spy()), "record", "--subprocesses", "--idle", "--format",
                    "raw", "--rate", str(RATE), "--output", str(raw), "--",
                    *fleet_command("deploy")], cwd=args.checkout,
                   env=fleet_env(args.checkout, args.registry), check=True,
                   capture_output=True)
    print(summarize(raw.read_text()))


if __name__ == "__main__":
    main()
