"""The README's commands on stock Debian 12 and 13: a plain ``debootstrap --variant=minbase``
rootfs (no python3-venv, no pip; Python 3.11 and 3.13), booted into with systemd-nspawn
sharing the host's network, with the host's CA bundle and package-index settings (apt
sources, pip config and local indexes) copied in, and a clone of the committed checkout.

What runs where:

- Debian 13 (Python 3.13, the newest): the README's test command without the lab tests,
  ``bash scripts/test -m "not lab"``: setup (apt packages, ``.venv``, the project with its
  test and dev tools from PyPI), ``ruff``, ``mypy`` and the whole unit suite;
- Debian 12: the same command on a smoke subset (the registry tests and the receiver under
  real gunicorn), to keep the test's time down;
- both: the start of the README's main command ``bash scripts/lab-demo``, up to the lab: its
  setup (above) and ``fleet init --secrets-only`` writing the demo's secrets file, then
  ``fleet --version`` from ``.venv``.

Not here: the lab tests and the rest of ``lab-demo`` (``fleet lab up`` and what follows), since
a lab node inside this container would be a nested systemd-nspawn; CI runs them on the host
(``.ci/run`` is ``bash scripts/test``). Slow: debootstrap once per release (cached), then apt
and PyPI installs and the tests. Seen here with the rootfs cached, on 2 cores at a load of 20
to 30: Debian 12 about 6.5 min (plus 4 min to unpack and remove the rootfs), Debian 13 about
18 min (the unit suite 10.5 min of it)."""

from __future__ import annotations

import os
import re
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
SUITES = ("bookworm", "trixie")

PIP_CONFIGS = (Path("/etc/pip.conf"), Path.home() / ".config/pip/pip.conf",
               Path.home() / ".pip/pip.conf")
HOST_FILES = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/resolv.conf"))


def stock_tarball(suite: str) -> Path:
    """A plain minbase rootfs of Debian ``suite``, built once and cached as a zstd tarball."""
    tarball = cache_dir() / f"stock-{suite}.tar.zst"
    with file_lock(cache_dir() / "stock.lock"):
        if tarball.exists():
            return tarball
        build = cache_dir() / f"stock-{suite}.build"
        shutil.rmtree(build, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", suite, str(build),
                        debian_mirror()], check=True, capture_output=True, timeout=1800)
        partial = tarball.with_name(tarball.name + ".part")
        subprocess.run(["tar", "--zstd", "-cpf", str(partial), "--numeric-owner", "-C",
                        str(build), "."], check=True, timeout=600)
        partial.rename(tarball)
        shutil.rmtree(build, ignore_errors=True)
    return tarball


def host_codename() -> str:
    """The host's Debian release name (``VERSION_CODENAME`` of /etc/os-release), or ''."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    return ""


def copy_in(root: Path, path: Path) -> None:
    """Copy a host file to the same path inside ``root`` (if the host has it)."""
    if path.is_file():
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        shutil.copyfile(path, target)


@pytest.fixture(params=SUITES)
def stock_root(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh stock rootfs with a clone of this checkout in /src and the host's settings."""
    skip_unless_root()
    if shutil.which("debootstrap") is None or shutil.which("systemd-nspawn") is None:
        pytest.skip("debootstrap and systemd-nspawn are needed (bash scripts/setup)")
    root = tmp_path_factory.mktemp("stock") / request.param  # named after its release
    root.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", str(stock_tarball(request.param)), "-C",
                    str(root), "--numeric-owner"], check=True, timeout=600)
    assert not list(root.glob("usr/lib/python3.*/ensurepip"))  # stock: no python3-venv
    (root / "etc/apt/sources.list").unlink(missing_ok=True)  # the host's sources instead
    # the host's own CAs where update-ca-certificates keeps them (apt rewrites the bundle)
    for path in [*HOST_FILES, Path("/etc/apt/sources.list"), *PIP_CONFIGS,
                 *Path("/etc/apt/sources.list.d").glob("*"),
                 *Path("/etc/apt/apt.conf.d").glob("*"),
                 *Path("/usr/local/share/ca-certificates").glob("*.crt")]:
        copy_in(root, path)
    host_suite = host_codename()
    if host_suite and request.param != host_suite:  # the host's mirrors, this release's suites
        for path in [root / "etc/apt/sources.list",
                     *(root / "etc/apt/sources.list.d").glob("*.sources"),
                     *(root / "etc/apt/sources.list.d").glob("*.list")]:
            if path.is_file():
                path.write_text(path.read_text().replace(host_suite, request.param))
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


README_TEST = "bash scripts/test -m 'not lab' -q -p no:cacheprovider"
SMOKE = "tests/registry tests/webhook/test_gunicorn.py"
DEMO_START = ("bash scripts/setup && .venv/bin/fleet --registry registry.yaml init "
              "--secrets-only --secrets /root/demo-secrets.yaml")
CHECKS = {"trixie": README_TEST, "bookworm": f"{README_TEST} {SMOKE}"}


def test_readme_commands_on_stock_debian(stock_root: Path) -> None:
    binds = [f"--bind-ro={path}" for path in local_indexes()]
    env = [f"--setenv={key}={value}" for key, value in os.environ.items()
           if key.startswith("PIP_")]
    command = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--pipe",
               "-D", str(stock_root), *binds, *env, "--chdir=/src",
               "bash", "-c", f"{CHECKS[stock_root.name]} && {DEMO_START} && "
                             ".venv/bin/fleet --version"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"{done.stdout[-5000:]}\n--- stderr:\n{done.stderr[-1500:]}"
    summary = [line for line in done.stdout.splitlines()
               if re.fullmatch(r"\d+ passed.* in [\d.]+s( \(.*\))?", line)]
    assert summary and "failed" not in summary[0] and "error" not in summary[0], summary
    assert "Wrote /root/demo-secrets.yaml (mode 0600)" in done.stdout  # lab-demo's fleet init
    assert done.stdout.strip().splitlines()[-1].startswith("fleet, version ")
