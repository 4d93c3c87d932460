"""The dispatcher ends once its parent (the gunicorn master) is gone, also when another
process got the parent's pid meanwhile."""

from __future__ import annotations

import os
import threading

from fleet.core.liveness import start_time
from fleet.webhook.config import Settings
from fleet.webhook.dispatcher import run


def test_the_dispatcher_ends_when_its_parents_pid_was_reused(settings: Settings) -> None:
    started = start_time(os.getpid())
    assert started is not None
    ended: list[bool] = []
    # this process's pid, with another start time: the parent that had it is gone
    thread = threading.Thread(target=lambda: ended.append(run(
        settings, parent_pid=os.getpid(), poll_seconds=0.05, parent_started=started + 1)))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and ended == [True]
