"""How the CLI shows long work live on a terminal, drawn by ``rich`` (the one owner of terminal
rendering), and as plain lines otherwise, so a CI log stays readable (no escape codes):

- the lab's long steps (:mod:`fleet.lab.steps`): a spinner, the step, its elapsed time ticking
  and its usual time here (:class:`LabProgress`);
- a rollout (``fleet deploy``, ``fleet rollback``): its stages, each host's phase and outcome,
  and a failure's reason in place, from the rollout's typed events
  (:mod:`fleet.control.rollout_events`; :class:`RolloutView`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fleet.control.rollout_events import (
    HostDone,
    HostPhase,
    RegionUnreachable,
    RolloutEvent,
    RolloutFinished,
    RolloutPlanned,
    RolloutStopped,
    StagePlan,
    StageStarted,
)
from fleet.lab.steps import describe


class LabProgress:
    """A progress sink for :mod:`fleet.lab`: ``progress(message)`` prints a line;
    ``begin``/``end`` show a long step live while the console is a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or terminal_console(stderr=True)
        self._live: Progress | None = None

    def __call__(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def begin(self, label: str, usual: float | None) -> None:
        """A step starts: a live line on a terminal, else its opening line."""
        if not self.console.is_terminal:
            self(describe(label, usual))
            return
        self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                              TimeElapsedColumn(), TextColumn("{task.fields[usual]}"),
                              console=self.console, transient=True, refresh_per_second=4)
        self._live.start()
        self._live.add_task(label, total=None,
                            usual=f"(usually {usual:.0f} s here)" if usual is not None else "")

    def end(self, label: str, elapsed: float, ok: bool) -> None:
        """The step ended: the live line gives way to one line with its time."""
        self._drawing = False
        if self._live is not None:
            self._live.stop()
            self._live = None
        self(f"{label}: {'done' if ok else 'stopped'} after {elapsed:.0f} s")


OUTCOMES = ("ok", "planned", "failed", "rolled_back", "skipped")  # a stage's, in this order
STYLES = {"ok": "green", "planned": "green", "failed": "bold red", "not ok": "bold red",
          "rolled_back": "yellow", "skipped": "dim"}


def terminal_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that prints text as given (no markup, highlighting or
    emoji)."""
    return Console(stderr=stderr, highlight=False, markup=False, emoji=False)


class RolloutView:
    """A rollout drawn live from its events: a header, then per stage its label (``canary``,
    ``workers``, the region, ``batch i of n``) and state, and per host its phase while it runs,
    then its outcome and, unless ok, the reason. Outcomes are words, so colour is only an aid.
    Use as a context manager around the rollout; ``observe`` takes the events, ``echo`` the
    streamed text (shown above the view with ``verbose``, else dropped)."""

    def __init__(self, console: Console | None = None, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or terminal_console()
        self.verbose = verbose
        self.clock = clock
        self.plan: RolloutPlanned | None = None
        self.started: dict[int, float] = {}  # stage index: when it started
        self.phases: dict[str, str] = {}
        self.outcomes: dict[str, HostDone] = {}
        self.stopped = ""
        self.unreachable: list[str] = []
        self.finished = ""
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._drawing = False  # inside ``with``: the view is drawn once the plan is known

    def __enter__(self) -> RolloutView:
        self._drawing = True
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._drawing = False
        if self._live is not None:
            self._live.stop()
            self._live = None

    def echo(self, line: str) -> None:
        """A line of the rollout's streamed text: above the view with ``verbose``."""
        if self.verbose:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def observe(self, event: RolloutEvent) -> None:
        """Take one rollout event into the view."""
        with self._lock:
            if isinstance(event, RolloutPlanned):
                self.plan = event
            elif isinstance(event, StageStarted):
                self.started.setdefault(event.index, self.clock())
            elif isinstance(event, HostPhase):
                self.phases[event.host] = event.phase
            elif isinstance(event, HostDone):
                self.outcomes[event.host] = event
            elif isinstance(event, RolloutStopped):
                self.stopped = event.why
            elif isinstance(event, RegionUnreachable):
                self.unreachable.append(event.region)
            elif isinstance(event, RolloutFinished):
                self.finished = event.status
        if self._live is None and self._drawing and self.plan is not None:
            self._live = Live(self, console=self.console, refresh_per_second=4)  # drawn from
            self._live.start()  # the plan on (it renders: outside the lock)
        elif self._live is not None:
            self._live.refresh()

    def __rich__(self) -> RenderableType:
        with self._lock:
            return self.render()

    def render(self) -> RenderableType:
        """The view as it is now."""
        if self.plan is None:
            return Text("")
        plan = self.plan
        what = " (dry run)" if plan.dry else f" release {plan.release}" if plan.release else ""
        header = Text(f"{plan.kind}{what}, run {plan.run_id}", style="bold")
        table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
        table.add_column("where", no_wrap=True)
        table.add_column("state", no_wrap=True, min_width=11)  # "rolled back": steady
        table.add_column("detail", overflow="fold")
        for index, stage in enumerate(plan.stages):
            state, detail = self.stage_state(index, stage)
            table.add_row(Text(self.stage_name(index), style="bold"),
                          Text(state, style=STYLES.get(state, "")), Text(detail))
            for host in stage.hosts:
                table.add_row(*self.host_row(index, host))
        footer = [Text(line) for line in (
            *[f"region {region} is unreachable: skipped" for region in self.unreachable],
            f"stopped: {self.stopped}; the later stages change nothing" if self.stopped else "",
            f"run {plan.run_id}: {self.finished}" if self.finished else "") if line]
        return Group(header, table, *footer)

    def stage_name(self, index: int) -> str:
        """``canary``, ``us workers``, ``workers batch 2 of 3``."""
        assert self.plan is not None
        stages = self.plan.stages
        stage = stages[index]
        name = f"{stage.region} {stage.label}" if stage.region else stage.label
        alike = [i for i, other in enumerate(stages)
                 if (other.label, other.region) == (stage.label, stage.region)]
        if len(alike) > 1:
            name += f" batch {alike.index(index) + 1} of {len(alike)}"
        return name

    def stage_state(self, index: int, stage: StagePlan) -> tuple[str, str]:
        """The stage's state (``pending``, ``running``, ``ok``, ``not ok``, ``skipped``) and
        its detail (the time it has run, or its outcomes: ``1 ok, 1 failed``)."""
        done = [self.outcomes[host].status for host in stage.hosts if host in self.outcomes]
        if len(done) == len(stage.hosts):
            counts = {status: done.count(status) for status in dict.fromkeys(
                [*OUTCOMES, *done]) if status in done}
            if len(counts) == 1:
                return next(iter(counts)), ""
            return "not ok", ", ".join(f"{count} {status.replace('_', ' ')}"
                                       for status, count in counts.items())
        if index in self.started:
            return "running", f"{self.clock() - self.started[index]:.0f} s"
        return "pending", ""

    def host_row(self, index: int, host: str) -> tuple[Text, Text, Text]:
        """A host's name, its outcome (or phase while it runs) and the reason."""
        name = Text(f"  {host}")
        done = self.outcomes.get(host)
        if done is not None:
            return (name, Text(done.status.replace("_", " "),
                               style=STYLES.get(done.status, "")), Text(done.reason))
        phase = self.phases.get(host) or ("connecting" if index in self.started else "pending")
        return name, Text(phase, style="cyan" if index in self.started else "dim"), Text("")
