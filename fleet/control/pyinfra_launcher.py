"""Start the pyinfra CLI with the installed packages' entry points read once per process.

    # same as pyinfra
    python -m fleet.control.pyinfra_launcher -y inventory.py deploy.py --limit NAME

On import, ``pyinfra_cli`` runs gevent's ``monkey.patch_all()``, which asks
``importlib.metadata.entry_points()`` for plugins once per patched module (about 25 times),
and pyinfra asks again for its connectors; every call reads the metadata of every installed
distribution. On a controller with a hundred-odd packages that is about half a second of CPU
per pyinfra process, on the critical path of every ``fleet deploy`` stage. The entry points
cannot change during a run, so they are read once here and every later call selects from that.

Two more costs of a short run are cut the same way, around pyinfra rather than in it:

- pyinfra's CLI turns bytecode writing off (for ``deploy.py``), so the deploy's own modules
  (``deploys/``, and ``fleet/`` run from a checkout) would be compiled from source in every
  run; they are byte-compiled first, when stale, unless the user turned bytecode off
  (``PYTHONDONTWRITEBYTECODE``).
- Once pyinfra's CLI has returned (hosts disconnected, output written), the process flushes its
  output and ends at once instead of tearing the interpreter down, which took about 0.08 s
  of a no-change stage.

Everything else is pyinfra's own CLI, unchanged.
"""

from __future__ import annotations

import compileall
import functools
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import fleet

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


def compile_own_modules(project: Path) -> None:
    """Byte-compile (when stale) the deploy's modules: ``deploys/`` of ``project`` and the
    ``fleet`` package itself; nothing when bytecode writing is off."""
    if sys.dont_write_bytecode:
        return
    for folder in (project / "deploys", Path(fleet.__file__).parent):
        if folder.is_dir() and os.access(folder, os.W_OK):
            compileall.compile_dir(folder, quiet=2)


def exit_now(code: int) -> None:
    """End the process with ``code`` once its output is flushed, skipping interpreter
    teardown (pyinfra has disconnected every host by then)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main() -> None:
    """Run pyinfra's CLI (``sys.argv`` as given) with cached entry points."""
    metadata.entry_points = cached_entry_points
    compile_own_modules(Path.cwd())
    from pyinfra_cli.main import main as pyinfra_main  # patches the stdlib for gevent

    try:
        pyinfra_main()
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            exit_now(done.code or 0)
        print(done.code, file=sys.stderr)  # as the interpreter would
        exit_now(1)
    exit_now(0)


if __name__ == "__main__":
    main()
