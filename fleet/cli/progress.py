"""How the CLI shows the lab's long steps (:mod:`fleet.lab.steps`): live on a terminal (a
spinner, the step, its elapsed time ticking and its usual time here, drawn by ``rich``), and
one plain line per step and message otherwise, so a CI log stays readable (no escape codes)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fleet.lab.steps import describe


class LabProgress:
    """A progress sink for :mod:`fleet.lab`: ``progress(message)`` prints a line;
    ``begin``/``end`` show a long step live while the console is a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, markup=False,
                                          emoji=False)
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
        if self._live is not None:
            self._live.stop()
            self._live = None
        self(f"{label}: {'done' if ok else 'stopped'} after {elapsed:.0f} s")
