"""Start the pyinfra CLI with the installed packages' entry points read once per process.

    python -m fleet.pyinfra_launcher -y inventory.py deploy.py --limit NAME   # same as pyinfra

On import, ``pyinfra_cli`` runs gevent's ``monkey.patch_all()``, which asks
``importlib.metadata.entry_points()`` for plugins once per patched module (about 25 times),
and pyinfra asks again for its connectors; every call reads the metadata of every installed
distribution. On a controller with a hundred-odd packages that is about half a second of CPU
per pyinfra process, on the critical path of every ``fleet deploy`` stage. The entry points
cannot change during a run, so they are read once here and every later call selects from that.
Everything else is pyinfra's own CLI, unchanged.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

_read_entry_points = metadata.entry_points


@functools.cache
def _installed() -> Any:
    """Every installed entry point, read once (``SelectableGroups`` before Python 3.12)."""
    return _read_entry_points()


def cached_entry_points(**params: Any) -> Any:
    """``importlib.metadata.entry_points(**params)``, selected from one read of the metadata."""
    if not params:
        return _read_entry_points()
    return _installed().select(**params)


def main() -> None:
    """Run pyinfra's CLI (``sys.argv`` as given) with cached entry points."""
    metadata.entry_points = cached_entry_points
    from pyinfra_cli.main import main as pyinfra_main  # patches the stdlib for gevent

    pyinfra_main()


if __name__ == "__main__":
    main()
