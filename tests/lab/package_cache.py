"""Package files a lab test fetched (a rootfs build's or a stock system's apt downloads), kept in
the machine's lab cache for the next run: debootstrap and apt still install every package, only
the downloads are saved."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fleet.lab.rootfs import prune_debs


def link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_debs(cache: Path, target: Path) -> None:
    """Link the package files kept in ``cache`` into ``target`` (made if missing). Safe to
    share: apt downloads into ``partial/`` and renames, debootstrap removes a bad file before
    it downloads again, so neither writes into a linked file."""
    target.mkdir(parents=True, exist_ok=True)
    for deb in cache.glob("*.deb"):
        if not (target / deb.name).exists():
            link(deb, target / deb.name)


def keep_debs(used: Path, cache: Path) -> None:
    """Make ``cache`` hold the package files in ``used`` (all a run installed): new ones linked
    in, the ones it did not use (older versions) removed. Callers hold the cache's lock."""
    cache.mkdir(parents=True, exist_ok=True)
    prune_debs(cache, used)
    link_debs(used, cache)
