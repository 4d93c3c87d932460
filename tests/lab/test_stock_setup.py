"""The README's commands on stock Debian 12 and 13: a plain ``debootstrap --variant=minbase``
rootfs (no python3-venv, no pip; Python 3.11 and 3.13) with the host's CA bundle and
package-index settings (apt sources, pip config and local indexes) copied in and a clone of
the committed checkout, entered as its own machine would be: the root of a private mount
namespace (``unshare --mount`` and ``pivot_root``) sharing the host's kernel and network, so
the lab's systemd-nspawn nodes boot from inside it as they would on a stock host.

What runs where, in each release: the README's main command, the whole
``bash scripts/lab-demo`` (setup, ``fleet init``, a lab with the model server, the deploy, the
webhook receiver, a message shown in a worker's inbox and a question answered by the model
over the bus), and the README's test command (setup, ``ruff``, ``mypy``, pytest):

- Debian 13 (Python 3.13, the newest): the unit tier's tests of what nodes run and of what
  both sides share (``bash scripts/test -m "not lab and not slow" tests/registry tests/bus
  tests/runtime ...``, :data:`NEWEST_SUBSET`); the controller's deploy, webhook and status run
  for real in the demo; the host's own run covers every tier on Python 3.11;
- Debian 12 (the release a new operator tried first): a unit smoke subset (the registry tests
  and the receiver under real gunicorn), then the lab's nodes booted from inside it (the
  demo's deploy, webhook and model answer are the acceptance run there).

The host's lab cache (``$FLEET_CACHE_DIR``: node rootfs images, the model and its server's
wheel, kept by C library and interpreter) is shared, so a warm host does not build them
again; so are the package files each release's setup fetched (``stock-<release>-apt/``: apt
still installs every package, only the downloads are saved; a run keeps what it used) and
pip's cache (``stock-pip/``: wheels by interpreter, downloads by URL). Slow: debootstrap once
per release (cached), then apt and PyPI installs and the tests.
Seen here with the caches warm on 2 cores at a load of 1 to 3: Debian 12 about 4.5 min,
Debian 13 about 7 min (the model server's wheel is built once, about 5 minutes more, only
on a cache without a wheel of Debian 12's or an older glibc: Debian 13 loads those).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.lab.paths import cache_dir, lab_lock
from fleet.lab.rootfs import debian_mirror
from tests.lab.package_cache import keep_debs, link_debs
from tests.lab_fixtures import REPO, claim_test_lab, fresh_lab, skip_unless_root

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.stock,
              pytest.mark.xdist_group("lab")]  # in turn with the session lab's modules: a
# third heavy group at once overloads 2 cores (timing checks failed in CI at a load of 7.5)
SUITES = ("bookworm", "trixie")

APT_ARCHIVES = "var/cache/apt/archives"
PIP_CACHE = "root/.cache/pip"
PIP_CONFIGS = (Path("/etc/pip.conf"), Path.home() / ".config/pip/pip.conf",
               Path.home() / ".pip/pip.conf")
HOST_FILES = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/resolv.conf"))


def stock_tarball(suite: str) -> Path:
    """A plain minbase rootfs of Debian ``suite``, built once and cached as a zstd tarball."""
    tarball = cache_dir() / f"stock-{suite}.tar.zst"
    with lab_lock(cache_dir() / "stock.lock"):
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
    apt_cache = cache_dir() / f"stock-{request.param}-apt"
    link_debs(apt_cache, root / APT_ARCHIVES)
    try:
        yield root
        with lab_lock(cache_dir() / "stock.lock"):
            keep_debs(root / APT_ARCHIVES, apt_cache)
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


UNIT_TIER = "not lab and not slow"
README_TEST = f"bash scripts/test -m '{UNIT_TIER}' -q -p no:cacheprovider"
SMOKE = "tests/registry tests/webhook/test_gunicorn.py"
# On Python 3.13: the tests of what nodes run (gateway, bus, runtime, node helper) and of what
# both sides share (registry, secrets, SQLite, serving, files, clocks); the controller's
# deploy, webhook and status run for real in the demo there.
NEWEST_SUBSET = ("tests/registry tests/bus tests/runtime tests/secrets tests/test_sqlite.py "
                 "tests/test_serving.py tests/test_atomic.py tests/test_timestamps.py "
                 "tests/test_locks.py tests/test_liveness.py tests/test_compatibility.py")
LAB_TESTS = ("bash scripts/test -m lab -q -p no:cacheprovider tests/lab/test_lab_nodes.py")
DEMO = "bash scripts/lab-demo && echo LAB-DEMO-PASSED"
CHECKS = {  # each release's commands, run in turn in its rootfs
    "trixie": f"{README_TEST} {NEWEST_SUBSET} && {DEMO}",
    "bookworm": f"{README_TEST} {SMOKE} && {DEMO} && {LAB_TESTS}",
}
CLEAN_UP = ".venv/bin/fleet lab down --all"


def inner_lab_names(suite: str) -> list[str]:
    """The lab names of the run inside (``FLEET_TEST_LAB``, ``FLEET_LAB``), its own: the
    rootfs keeps its own lab folders but shares the host's cgroups, where lab names meet, so
    a ``pytest`` lab inside would take down the host session's ``pytest`` lab."""
    return [f"FLEET_TEST_LAB=stock-{suite}", f"FLEET_LAB=stock-{suite}-demo"]


def enter_script(root: Path, binds: list[str], command: str) -> str:
    """A shell script for ``unshare --mount``: ``root`` becomes the root of a private mount
    namespace (pivot_root, not chroot: lab nodes are systemd-nspawn containers, whose
    services may not create user namespaces under a chroot) with the host's /proc, /sys, /dev,
    the lab cache, pip's cache (``stock-pip/`` of the lab cache) and the local package
    indexes, then ``command`` runs in /src."""
    q = shlex.quote
    cache = cache_dir()
    env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
           *inner_lab_names(root.name),
           *(f"{key}={value}" for key, value in os.environ.items() if key.startswith("PIP_"))]
    lines = ["set -eu", f"mount --bind {q(str(root))} {q(str(root))}",
             f"cd {q(str(root))}", "mount -t proc proc proc",  # in the new mount, not under it
             "mount --rbind /sys sys", "mount --rbind /dev dev", "mount -t tmpfs tmpfs run",
             "mount -t tmpfs tmpfs tmp", f"mkdir -p .{q(str(cache))}",
             f"mount --bind {q(str(cache))} .{q(str(cache))}",
             f"mkdir -p {q(str(cache / 'stock-pip'))} {PIP_CACHE}",
             f"mount --bind {q(str(cache / 'stock-pip'))} {PIP_CACHE}"]
    for path in binds:
        lines += [f"mkdir -p .{q(path)}", f"mount --bind -o ro {q(path)} .{q(path)}"]
    inner = f"umount -l /.oldroot && rmdir /.oldroot && cd /src && {command}"
    lines += ["mkdir -p .oldroot", "pivot_root . .oldroot",
              f"exec /usr/bin/env -i {' '.join(q(item) for item in env)} /bin/bash -c "
              f"{q(inner)}"]
    return "\n".join(lines)


def run_inside(root: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``command`` in ``root`` as its own machine would run it (see :func:`enter_script`)."""
    script = enter_script(root, local_indexes(), command)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           script], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def host_lab() -> Iterator[str]:
    """A one-node lab of the host's, up while the runs inside boot theirs: they must leave
    it alone (lab names meet in the host's cgroups; see :func:`inner_lab_names`)."""
    skip_unless_root()
    claimed = claim_test_lab("stock-witness")
    try:
        fresh_lab(claimed.lab, nodes=1)
        yield claimed.lab
    finally:
        lab.down(claimed.lab)
        claimed.release()


def test_readme_commands_on_stock_debian(stock_root: Path, host_lab: str) -> None:
    try:
        done = run_inside(stock_root, CHECKS[stock_root.name], timeout=3600)
    finally:
        if (stock_root / "src/.venv/bin/fleet").exists():
            run_inside(stock_root, CLEAN_UP, timeout=600)  # labs left by a failure
    nodes = lab.status(host_lab)  # the labs inside left the host's alone
    assert nodes and all(node.running for node in nodes), nodes
    assert done.returncode == 0, f"{done.stdout[-5000:]}\n--- stderr:\n{done.stderr[-1500:]}"
    summaries = [line for line in done.stdout.splitlines()
                 if re.fullmatch(r"\d+ passed.* in [\d.]+s( \(.*\))?", line)]
    assert summaries and not [line for line in summaries if "failed" in line or "error" in line]
    assert len(summaries) == (2 if stock_root.name == "bookworm" else 1), summaries
    demo = done.stdout[:done.stdout.index("LAB-DEMO-PASSED")]
    assert "(mode 0600)" in demo  # lab-demo's fleet init wrote the secrets file
    assert re.search(r"webhook receiver on \S+: active", demo)
    assert "inbox (fleet bus tail" in demo and "hello from the lab demo" in demo
    assert re.search(r"answer:\n[\w.-]+: ", demo)  # an agent answered over the bus
