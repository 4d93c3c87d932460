"""Schedules: prompts an agent is given on a calendar (registry ``wizards.NAME.schedules``).

Each schedule becomes a systemd timer and a oneshot service on the agent's node
(``fleet-schedule-AGENT_NAME.timer`` / ``.service``, :func:`unit_base`); the service posts the
prompt as a signed request into the agent's own inbox (:mod:`fleet.node.schedule`). This module
owns the checks of the values that reach those units, so the registry (:mod:`fleet.core.registry`,
with file and line) and the renderer (:mod:`fleet.control.render`) refuse the same things:

- ``NAME``: :data:`NAME_RE`, matched in full (it is part of two unit names);
- ``on``: a systemd calendar expression (``systemd.time(7)``) of :data:`ON_RE`'s characters
  (no quote, backslash, ``%`` or ``$``: it stands unquoted after ``OnCalendar=``), at most
  :data:`MAX_ON` long, never starting with ``-``; checked by ``systemd-analyze calendar``
  (argv, no shell) where the controller has it, else by :func:`fallback_problem`, a strict
  documented subset of the grammar that systemd also accepts;
- ``prompt``: one line (the registry refuses control characters everywhere), at most
  :data:`MAX_PROMPT` characters, not blank;
- ``capability``: a capability name (the registry checks that another agent declares it).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
NAME_FORM = "1-31 lowercase letters, digits and '-', starting with a letter"
ON_RE = re.compile(r"[A-Za-z0-9*:,./~_+][A-Za-z0-9 *:,./~_+-]*")
MAX_ON = 256
MAX_PROMPT = 4096
FIELDS = ("on", "prompt", "capability")
REQUIRED = ("on", "prompt")
SYSTEMD_ANALYZE = "systemd-analyze"
CHECK_TIMEOUT_S = 10.0
UNIT_PREFIX = "fleet-schedule-"
EXAMPLE = '"*-*-* 02:00:00" (every day at 02:00)'


@dataclass(frozen=True)
class Schedule:
    """One schedule of an agent: its name, calendar expression, prompt and, when set, the
    capability of the agent that should answer it (routed by the agent's runtime)."""

    name: str
    on: str
    prompt: str
    capability: str | None = None
    line: int = 0

    def to_dict(self) -> dict[str, str]:
        """As registry YAML spells it."""
        data = {"on": self.on, "prompt": self.prompt}
        if self.capability:
            data["capability"] = self.capability
        return data


def unit_base(agent: str, schedule: str) -> str:
    """The units' name without suffix: ``fleet-schedule-AGENT_SCHEDULE`` (``_`` is in no agent
    or schedule name, so each agent's units are ``fleet-schedule-AGENT_*`` and no other's)."""
    return f"{UNIT_PREFIX}{agent}_{schedule}"


def unit_glob(agent: str) -> str:
    """The shell pattern of every schedule unit of ``agent``."""
    return f"{UNIT_PREFIX}{agent}_*"


def on_problem(value: Any) -> str:
    """Why ``value`` is not a calendar expression a timer unit may carry (empty when it is):
    :func:`on_shape_problem`, then :func:`calendar_problem`."""
    return on_shape_problem(value) or calendar_problem(value)


def on_shape_problem(value: Any) -> str:
    """Why ``value`` cannot stand after ``OnCalendar=`` as it is (empty when it can): a string
    of :data:`ON_RE`'s characters, at most :data:`MAX_ON` long, no ``-`` or space first, no
    space last. Nothing in it is quoted, escaped or expanded by systemd's unit parser."""
    if not isinstance(value, str) or not value:
        return f"{value!r} is not a calendar expression (a string like {EXAMPLE})"
    if len(value) > MAX_ON:
        return f"is {len(value)} characters long; at most {MAX_ON} allowed"
    if value[0] == "-":
        return f"{value!r} starts with '-'; write a calendar expression like {EXAMPLE}"
    if not ON_RE.fullmatch(value) or value != value.strip():
        return (f"{value!r} holds a character a calendar expression has no use for (allowed: "
                "letters, digits, spaces inside, and * : , . / ~ _ + -); write one like "
                f"{EXAMPLE}")
    return ""


@functools.lru_cache(maxsize=256)
def calendar_problem(value: str) -> str:
    """What ``systemd-analyze calendar`` says is wrong with ``value`` (empty when it parses);
    without ``systemd-analyze`` on this machine, :func:`fallback_problem`."""
    program = shutil.which(SYSTEMD_ANALYZE)
    if program is None:
        return fallback_problem(value)
    try:
        done = subprocess.run([program, "calendar", "--", value], capture_output=True,
                              text=True, timeout=CHECK_TIMEOUT_S, check=False,
                              stdin=subprocess.DEVNULL,
                              env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not be checked: {SYSTEMD_ANALYZE} calendar failed to run ({exc})"
    if done.returncode == 0:
        return ""
    said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
    return (f"{value!r} is not a systemd calendar expression ({SYSTEMD_ANALYZE} calendar: "
            f"{said}); write one like {EXAMPLE}, see systemd.time(7)")


# The fallback: what `fallback_problem` accepts without systemd-analyze (README, Schedules).
KEYWORDS = ("minutely", "hourly", "daily", "weekly", "monthly", "quarterly", "semiannually",
            "yearly", "annually")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FIELD_RANGES = {"year": (1970, 2199), "month": (1, 12), "day": (1, 31), "hour": (0, 23),
                 "minute": (0, 59), "second": (0, 59)}
_ITEM_RE = re.compile(r"\*|(?P<a>[0-9]{1,4})(?:\.\.(?P<b>[0-9]{1,4}))?(?:/(?P<n>[0-9]{1,4}))?")
FALLBACK_FORM = ("without systemd-analyze only this form is checked: a keyword (minutely, "
                 "hourly, daily, weekly, monthly, quarterly, semiannually, yearly, annually) or "
                 "[Mon..Fri,Sun ]YEAR-MONTH-DAY HOUR:MINUTE[:SECOND][ UTC], each part * or a "
                 "list of N, N..M (N below M) or N/STEP (N+STEP in range); install systemd for "
                 "the whole grammar")


def _component_problem(text: str, field: str) -> str:
    low, high = _FIELD_RANGES[field]
    if text != "*" and "*" in text.split(","):
        return f"{field} {text!r} lists *, which stands alone"
    for item in text.split(","):
        found = _ITEM_RE.fullmatch(item)
        if found is None:
            return f"{field} {item!r} is not *, N, N..M or N/STEP"
        if item == "*":
            continue
        first = int(found["a"])
        last = int(found["b"]) if found["b"] is not None else first
        if not low <= first <= last <= high:
            return f"{field} {item!r} is outside {low}..{high}"
        if found["b"] is not None and first == last:
            return f"{field} {item!r} is a range of one value; write {first}"
        if found["n"] is not None and not 1 <= int(found["n"]) <= high - first:
            return (f"{field} {item!r} repeats every {int(found['n'])}: from {first} at most "
                    f"{high - first}")
    return ""


def _weekdays_problem(text: str) -> str:
    for item in text.split(","):
        days = item.split("..")
        if len(days) > 2 or not all(day in WEEKDAYS for day in days):
            return f"weekday {item!r} is not Mon..Sun or a day like Mon"
    return ""


def fallback_problem(value: str) -> str:
    """The strict check used when this machine has no ``systemd-analyze``: ``value`` must be
    in :data:`FALLBACK_FORM` (a subset of ``systemd.time(7)``'s grammar: whatever it accepts,
    systemd accepts too); empty when it is."""
    if value in KEYWORDS:
        return ""
    words = value.split(" ")
    if words[-1] == "UTC":
        words = words[:-1]
    if words and words[0][:1].isalpha():
        problem = _weekdays_problem(words[0])
        if problem:
            return f"{value!r}: {problem}; {FALLBACK_FORM}"
        words = words[1:]
    if len(words) != 2 or words[0].count("-") != 2 or not 1 <= words[1].count(":") <= 2:
        return f"{value!r} is not of the form checked here; {FALLBACK_FORM}"
    parts = [*zip(words[0].split("-"), ("year", "month", "day"), strict=True),
             *zip(words[1].split(":"), ("hour", "minute", "second"), strict=False)]
    for text, field in parts:
        problem = _component_problem(text, field)
        if problem:
            return f"{value!r}: {problem}; {FALLBACK_FORM}"
    return ""


def prompt_problem(value: Any) -> str:
    """Why ``value`` is not a schedule's prompt (empty when it is one): a non-blank string of
    at most :data:`MAX_PROMPT` characters (control characters are refused registry-wide)."""
    if not isinstance(value, str) or not value.strip():
        return f"{value!r} is not a non-empty string (the prompt the agent is given)"
    if len(value) > MAX_PROMPT:
        return f"is {len(value)} characters long; at most {MAX_PROMPT} allowed"
    return ""
