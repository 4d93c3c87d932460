"""The README's setup on a stock Debian 12: a plain ``debootstrap --variant=minbase`` rootfs (no
python3-venv, no pip), booted into with systemd-nspawn sharing the host's network, with the
host's CA bundle and package-index settings (apt sources, pip config and local indexes) copied
in. ``bash scripts/setup`` must install what it needs and the project into ``.venv``, and
``fleet`` must run from it. Slow (debootstrap once, cached; then apt and PyPI installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.lab.locks import file_lock
from fleet.lab.paths import cache_dir
from fleet.lab.rootfs import debian_mirror
from tests.lab_fixtures import REPO, skip_unless_root

pytestmark = [pytest.mark.lab, pytest.mark.slow]
SUITE = "bookworm"
PIP_CONFIGS = (Path("/etc/pip.conf"), Path.home() / ".config/pip/pip.conf",
               Path.home() / ".pip/pip.conf")
HOST_FILES = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/resolv.conf"))


def stock_tarball() -> Path:
    """A plain minbase rootfs of Debian 12, built once and cached as a zstd tarball."""
    tarball = cache_dir() / f"stock-{SUITE}.tar.zst"
    with file_lock(cache_dir() / "stock.lock"):
        if tarball.exists():
            return tarball
        build = cache_dir() / f"stock-{SUITE}.build"
        shutil.rmtree(build, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(build),
                        debian_mirror()], check=True, capture_output=True, timeout=1800)
        partial = tarball.with_name(tarball.name + ".part")
        subprocess.run(["tar", "--zstd", "-cpf", str(partial), "--numeric-owner", "-C",
                        str(build), "."], check=True, timeout=600)
        partial.rename(tarball)
        shutil.rmtree(build, ignore_errors=True)
    return tarball


def copy_in(root: Path, path: Path) -> None:
    """Copy a host file to the same path inside ``root`` (if the host has it)."""
    if path.is_file():
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        shutil.copyfile(path, target)


@pytest.fixture
def stock_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh stock rootfs with a clone of this checkout in /src and the host's settings."""
    skip_unless_root()
    if shutil.which("debootstrap") is None or shutil.which("systemd-nspawn") is None:
        pytest.skip("debootstrap and systemd-nspawn are needed (bash scripts/setup)")
    root = tmp_path_factory.mktemp("stock") / "root"
    root.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", str(stock_tarball()), "-C", str(root),
                    "--numeric-owner"], check=True, timeout=600)
    assert not (root / "usr/lib/python3.11/ensurepip").exists()  # stock: no python3-venv
    (root / "etc/apt/sources.list").unlink(missing_ok=True)  # the host's sources instead
    # the host's own CAs where update-ca-certificates keeps them (apt rewrites the bundle)
    for path in [*HOST_FILES, Path("/etc/apt/sources.list"), *PIP_CONFIGS,
                 *Path("/etc/apt/sources.list.d").glob("*"),
                 *Path("/etc/apt/apt.conf.d").glob("*"),
                 *Path("/usr/local/share/ca-certificates").glob("*.crt")]:
        copy_in(root, path)
    subprocess.run(["git", "clone", "-q", str(REPO), str(root / "src")], check=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def local_indexes() -> list[str]:
    """Local package indexes the host's pip settings name (bound read-only into the rootfs;
    a ``.../simple`` index with its parent, where its files are)."""
    words = [word for config in PIP_CONFIGS if config.is_file()
             for word in config.read_text().replace("=", " ").split()]
    words += [word for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL")
              for word in os.environ.get(name, "").split()]
    found = set()
    for word in words:
        path = Path(word.removeprefix("file://"))
        if path.is_absolute() and path.is_dir() and not str(path).startswith("/etc"):
            found.add(str(path.parent if path.name == "simple" else path))
    return sorted(found)


def test_readme_setup_runs_on_stock_debian(stock_root: Path) -> None:
    binds = [f"--bind-ro={path}" for path in local_indexes()]
    env = [f"--setenv={key}={value}" for key, value in os.environ.items()
           if key.startswith("PIP_")]
    command = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--pipe",
               "-D", str(stock_root), *binds, *env, "--chdir=/src",
               "bash", "-c", "bash scripts/setup && .venv/bin/fleet --version "
                             "&& .venv/bin/python -c 'import pyinfra, testinfra'"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.strip().splitlines()[-1].startswith("fleet, version ")
