"""Charts of the deploy benchmark: ``bench/results/deploy_vs_ansible.json`` (written by
``bench/deploy_vs_ansible.py``) as SVG, for the README's Performance section.

    python bench/plot.py            # writes bench/results/deploy_vs_ansible.svg
    python bench/plot.py --check    # exit 1 when the committed chart is not what the JSON gives

One chart, two panels (cold, no-change): per fleet size, the median wall seconds of each tool
as a bar with its min-max range, the value written on the bar (readable without colour: each
tool also has its own hatch), and our deploy's floor (interpreter + pyinfra imports + OpenSSH
to every host) as a dashed line. The SVG is deterministic (no date, fixed ids), so the
committed file changes only with the data or the plotting code.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = RESULTS / "deploy_vs_ansible.json"
CHART = RESULTS / "deploy_vs_ansible.svg"
TOOLS = {"fleet": ("Sovereign Fleet (pyinfra)", "#1b6ac9", ""),
         "ansible": ("Ansible", "#c4302b", "//"),
         "mitogen": ("Ansible + Mitogen", "#7a7a7a", "..")}
RUNS = {"cold": "Cold deploy", "no_change": "Nothing to change"}


def summary(runs: list[dict[str, Any]], kind: str) -> tuple[float, float, float]:
    """Median, min and max wall seconds of ``kind`` runs."""
    walls = [run[kind]["wall_s"] for run in runs if kind in run]
    return statistics.median(walls), min(walls), max(walls)


def floor_of(runs: list[dict[str, Any]]) -> float | None:
    """Median floor seconds measured beside our runs (None when not measured)."""
    floors = [run["floor"]["floor_s"] for run in runs if isinstance(run.get("floor"), dict)]
    return statistics.median(floors) if floors else None


def render(data: dict[str, Any]) -> str:
    """The chart of ``data`` (the benchmark's JSON) as SVG text."""
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({"svg.hashsalt": "sovereign-fleet", "font.size": 9,
                                "svg.fonttype": "none"})
    sizes = sorted(data["sizes"], key=int)
    figure, axes = plt.subplots(1, len(RUNS), figsize=(10, 4.2))
    for axis, (kind, title) in zip(axes, RUNS.items(), strict=True):
        tools = [tool for tool in TOOLS if any(data["sizes"][size]["runs"].get(tool)
                                               for size in sizes)]
        width = 0.8 / len(tools)
        for index, tool in enumerate(tools):
            label, colour, hatch = TOOLS[tool]
            xs, heights, low, high = [], [], [], []
            for position, size in enumerate(sizes):
                runs = data["sizes"][size]["runs"].get(tool)
                if not runs:
                    continue
                median, least, most = summary(runs, kind)
                xs.append(position + (index - (len(tools) - 1) / 2) * width)
                heights.append(median)
                low.append(median - least)
                high.append(most - median)
            bars = axis.bar(xs, heights, width, yerr=[low, high], capsize=3, label=label,
                            color=colour, hatch=hatch, edgecolor="black", linewidth=0.5)
            axis.bar_label(bars, labels=[f"{value:.1f}" for value in heights], padding=2,
                           fontsize=7)
        for position, size in enumerate(sizes):
            floor = floor_of(data["sizes"][size]["runs"].get("fleet", []))
            if floor is not None:
                axis.hlines(floor, position - 0.45, position + 0.45, colors="black",
                            linestyles="dashed", linewidth=1,
                            label="our floor" if position == 0 else None)
        axis.set_xticks(range(len(sizes)), [f"{size} nodes" for size in sizes])
        axis.set_ylabel("wall seconds (median, min-max)")
        axis.set_title(title)
        axis.set_yscale("log")
        axis.grid(axis="y", linewidth=0.3)
    axes[0].legend(loc="upper left", fontsize=7)
    figure.suptitle("Same end state on the same lab nodes: time to deploy (lower is better)")
    figure.tight_layout()
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=CHART)
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed chart instead of writing it")
    args = parser.parse_args(argv)
    svg = render(json.loads(args.source.read_text()))
    if args.check:
        if not args.out.exists() or args.out.read_text() != svg:
            print(f"{args.out} is not what {args.source} gives: run python bench/plot.py",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(svg)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
