"""The dashboard's charts as geometry for server-rendered SVG (``templates/dashboard/
charts.html``): the latest runs (duration and outcome of each, linked to its record) and, per
agent, its bus traffic over the last hour (messages in and out per minute, outbox depth),
sampled from the gateways' ``/metrics`` by the dashboard itself (:class:`BusHistory`).

Readable without colour: each run's outcome is also a label under its bar (``ok``, ``failed``
...) and a shape above it (a circle for ok, a cross for failed, a triangle otherwise); the
two traffic lines differ in dash as well as colour. No script and no external asset draws
them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from bus.timestamps import parse_timestamp

RUN_CHART_W, RUN_CHART_H = 640, 200
PLOT_TOP, PLOT_BOTTOM, PLOT_LEFT = 24, 160, 48
SPARK_W, SPARK_H = 240, 48
HISTORY_S = 3600.0
BUCKET_S = 60.0
SHAPES = {"ok": "circle", "failed": "cross"}


@dataclass(frozen=True)
class RunBar:
    """One run's bar: where it is, how long the run took, how it ended."""

    run_id: str
    status: str
    seconds: float | None  # None: the run has not finished (or its times are unreadable)
    x: float
    y: float
    width: float
    height: float
    shape: str  # circle (ok), cross (failed), triangle (anything else)


@dataclass(frozen=True)
class RunChart:
    """The latest runs, oldest on the left; ``top_s``: the duration the y axis tops at."""

    bars: tuple[RunBar, ...]
    top_s: float
    width: int = RUN_CHART_W
    height: int = RUN_CHART_H
    plot_top: int = PLOT_TOP
    plot_bottom: int = PLOT_BOTTOM
    plot_left: int = PLOT_LEFT


def duration_s(started: str | None, finished: str | None) -> float | None:
    """Seconds from ``started`` to ``finished`` (ISO timestamps); None when either is
    missing or unreadable, or the end is before the start."""
    begin = parse_timestamp(started) if started else None
    end = parse_timestamp(finished) if finished else None
    if begin is None or end is None or end < begin:
        return None
    return (end - begin).total_seconds()


def nice_top(value: float) -> float:
    """A round axis top at or above ``value`` (1, 2 or 5 times a power of ten)."""
    step = 1.0
    while step * 10 <= value:
        step *= 10
    for factor in (1, 2, 5, 10):
        if value <= step * factor:
            return step * factor
    return step * 10


def run_chart(runs: Sequence[tuple[str, str, str | None, str | None]]) -> RunChart:
    """The chart of ``runs`` given newest first as ``(run_id, status, started, finished)``;
    drawn oldest first."""
    ordered = list(reversed(runs))
    seconds = [duration_s(started, finished) for _, _, started, finished in ordered]
    top = nice_top(max([value for value in seconds if value is not None] or [1.0]))
    slot = (RUN_CHART_W - PLOT_LEFT - 8) / max(len(ordered), 1)
    plot_h = PLOT_BOTTOM - PLOT_TOP
    bars = []
    for index, ((run_id, status, _, _), value) in enumerate(zip(ordered, seconds, strict=True)):
        height = 0.0 if value is None else max(2.0, plot_h * value / top)
        bars.append(RunBar(run_id=run_id, status=status, seconds=value,
                           x=round(PLOT_LEFT + index * slot + slot * 0.15, 1),
                           y=round(PLOT_BOTTOM - height, 1), width=round(slot * 0.7, 1),
                           height=round(height, 1), shape=SHAPES.get(status, "triangle")))
    return RunChart(bars=tuple(bars), top_s=top)


@dataclass(frozen=True)
class Sample:
    """One reading of an agent's ``/metrics``: when, messages received and delivered so far
    (counters), the outbox depth now."""

    at: float
    received: int
    delivered: int
    outbox: int


@dataclass(frozen=True)
class Traffic:
    """An agent's last hour as three polylines (``points`` attributes) and their peaks."""

    agent: str
    inbound: str
    outbound: str
    outbox: str
    peak_per_minute: int
    peak_outbox: int
    minutes: int  # how many minutes the samples cover
    total_in: int
    total_out: int
    width: int = SPARK_W
    height: int = SPARK_H


def per_minute(samples: Sequence[Sample], now: float) -> list[tuple[int, int, int]]:
    """``(in, out, outbox)`` for each minute of the last hour, oldest first: messages counted
    between the minute's first and last samples (a counter that went down, a restarted
    store, counts from zero again), and the largest outbox depth seen in it."""
    buckets: list[tuple[int, int, int]] = []
    for minute in range(int(HISTORY_S // BUCKET_S)):
        start = now - HISTORY_S + minute * BUCKET_S
        inside = [s for s in samples if start <= s.at < start + BUCKET_S]
        before = [s for s in samples if s.at < start]
        previous = before[-1] if before else (inside[0] if inside else None)
        if not inside or previous is None:
            buckets.append((0, 0, 0))
            continue
        last = inside[-1]
        received = last.received - previous.received
        delivered = last.delivered - previous.delivered
        buckets.append((received if received >= 0 else last.received,
                        delivered if delivered >= 0 else last.delivered,
                        max(s.outbox for s in inside)))
    return buckets


def _line(values: Sequence[int], top: int) -> str:
    step = SPARK_W / max(len(values) - 1, 1)
    return " ".join(f"{index * step:.1f},{SPARK_H - 2 - (SPARK_H - 4) * value / top:.1f}"
                    for index, value in enumerate(values))


def traffic(agent: str, samples: Sequence[Sample], now: float) -> Traffic:
    """``agent``'s traffic chart from its samples."""
    minutes = per_minute(samples, now)
    inbound = [m[0] for m in minutes]
    outbound = [m[1] for m in minutes]
    depth = [m[2] for m in minutes]
    peak = max([*inbound, *outbound, 1])
    covered = int(min(HISTORY_S, now - samples[0].at) // BUCKET_S) if samples else 0
    return Traffic(agent=agent, inbound=_line(inbound, peak), outbound=_line(outbound, peak),
                   outbox=_line(depth, max([*depth, 1])), peak_per_minute=peak,
                   peak_outbox=max(depth), minutes=covered, total_in=sum(inbound),
                   total_out=sum(outbound))


class BusHistory:
    """The last hour of every agent's bus gauges, sampled every ``every_s`` seconds by a
    thread of the dashboard's own (started with the first snapshot), whether or not the page
    is open: ``read(agent) -> {metric: value}`` reads one agent's ``/metrics``."""

    def __init__(self, read: Callable[[str], dict[str, int]], every_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.read, self.every_s, self.clock = read, every_s, clock
        self.samples: dict[str, deque[Sample]] = {}
        self.agents: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, agents: Iterable[str]) -> None:
        """Sample these agents from now on (the sampler starts on the first call)."""
        with self._lock:
            self.agents = tuple(agents)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dashboard-bus-history",
                                                daemon=True)
                self._thread.start()

    def record(self, agent: str, gauges: dict[str, int], at: float | None = None) -> None:
        """Keep one reading (an empty one, from an agent that did not answer, is skipped)."""
        if "fleet_bus_received_total" not in gauges:
            return
        sample = Sample(at=self.clock() if at is None else at,
                        received=gauges.get("fleet_bus_received_total", 0),
                        delivered=gauges.get("fleet_bus_delivered_total", 0),
                        outbox=gauges.get("fleet_bus_outbox_depth", 0))
        with self._lock:
            kept = self.samples.setdefault(agent, deque())
            kept.append(sample)
            while kept and kept[0].at < sample.at - HISTORY_S - BUCKET_S:
                kept.popleft()

    def charts(self) -> tuple[Traffic, ...]:
        """Each watched agent's traffic chart."""
        now = self.clock()
        with self._lock:
            return tuple(traffic(agent, list(self.samples.get(agent, ())), now)
                         for agent in self.agents)

    def _run(self) -> None:
        while not self._stop.is_set():
            for agent in self.agents:
                self.record(agent, self.read(agent))
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        """End the sampler (tests)."""
        self._stop.set()
