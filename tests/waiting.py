"""Polling for tests: wait until a check returns something truthy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(check: Callable[[], Any], timeout: float = 30.0,
             what: str | Callable[[], str] = "", every: float = 0.05) -> Any:
    """Poll ``check()`` every ``every`` seconds until it returns something truthy (returned);
    fail naming ``what`` after ``timeout`` (a callable: called then, to tell what was seen).
    An exception from ``check`` ends the wait at once (e.g. the awaited process exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:g} s waiting for {described or check}")
