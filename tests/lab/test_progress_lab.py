"""``fleet lab up`` while the base rootfs is built (a fresh cache): on a pseudo-terminal the
build step shows its elapsed time ticking; with output to a file, one plain line per step.

The fresh cache starts with the package files of the machine's last bookworm build
(``debs-bookworm/``, as a cache would after an earlier build): debootstrap still installs every
package and the rootfs is built, packed and unpacked as ever, only the downloads are saved;
the packages this build used are kept there for the next run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.lab.paths import cache_dir, lab_lock
from fleet.lab.rootfs import debs_dir
from tests.lab.package_cache import keep_debs, link_debs
from tests.lab_fixtures import REPO

pytestmark = [pytest.mark.lab, pytest.mark.slow]
ESCAPE_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_forced_rootfs_build_shows_its_progress(tmp_path: Path,
                                                   claim_spare: Callable[[str], str]) -> None:
    lab = claim_spare("progress")
    shared = debs_dir()  # the machine's lab cache
    own = tmp_path / "cache" / shared.name
    link_debs(shared, own)
    env = {**os.environ, "FLEET_CACHE_DIR": str(tmp_path / "cache"), "TERM": "xterm",
           "COLUMNS": "160"}
    fleet = [sys.executable, "-m", "fleet", "--registry", str(REPO / "registry.yaml"), "lab"]
    screen_file = tmp_path / "typescript"
    up = " ".join(shlex.quote(word) for word in [*fleet, "up", "-n", "1", "--lab", lab])
    subprocess.run(["script", "-q", "-e", "-c", up, str(screen_file)], env=env, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=900)
    screen = screen_file.read_text(errors="replace")
    plain = ESCAPE_RE.sub("", screen)
    step = "building the bookworm base rootfs with debootstrap"
    ticks = sorted(set(re.findall(re.escape(step) + r".*? 0:0([0-9]:[0-9]{2})", plain)))
    assert "\x1b[" in screen and len(ticks) >= 10, plain[-3000:]  # seconds ticking by
    assert re.search(re.escape(step) + r".*: done after [0-9]+ s", plain), plain[-3000:]
    subprocess.run([*fleet, "down", "--lab", lab], env=env, check=True, capture_output=True,
                   timeout=120)
    with lab_lock(cache_dir() / "rootfs.lock"):  # the lock of the machine's builds
        keep_debs(own, shared)

    for base in (tmp_path / "cache").glob("*"):  # the unpacked base, not its tarball
        if base.is_dir() and not base.name.startswith(("models", "wheels", "debs")) \
                and (base / "etc").is_dir():
            subprocess.run(["rm", "-rf", str(base)], check=True)
    log = tmp_path / "up.log"
    with log.open("w") as out:
        subprocess.run([*fleet, "up", "-n", "1", "--lab", lab], env=env, check=True,
                       stdout=out, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert "\x1b" not in text
    assert re.search(r"^unpacking .*\.tar\.zst$", text, re.MULTILINE), text
    subprocess.run([*fleet, "down", "--lab", lab], env=env, check=True, capture_output=True,
                   timeout=120)
