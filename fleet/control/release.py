"""Release id and release artifact: what the release phase ships to a node.

A release is a tarball holding ``site/`` (Flask, gunicorn, PyYAML, requests and their
dependencies as manylinux x86_64 wheels, unpacked, plus what a node runs of ours: ``SHIPPED``,
that is ``fleet/__init__.py``, :mod:`fleet.core`, :mod:`fleet.node` and ``bus``; nothing of the
controller's) and ``site/RELEASE`` (its id). One release runs on every node Python of
``NODE_PYTHONS`` (Debian 12's 3.11, Ubuntu 24.04's 3.12, Debian 13's 3.13): the dependencies are
resolved once for the first, the same versions fetched for the others, and their compiled
modules (named per interpreter, ``*.cpython-313-*.so``) laid side by side in one tree. Nodes
need nothing but ``python3``; the unit runs ``python3 -m gunicorn`` with
``PYTHONPATH=<release>/site``.

The release id is the repo's git sha (12 digits); when the shipped sources (``SHIPPED``,
``pyproject.toml``) differ from ``HEAD`` it becomes ``<sha12>-dirty-<hash8>``.

The node running the webhook receiver, a controller on a node, also gets the receiver's code
(:func:`build_receiver_code`: the ``fleet`` package but the lab), unpacked beside its release's
``site/``.

Test hook: ``FLEET_BROKEN_RELEASE`` in the controller's environment builds a deliberately
broken release, so the verify phase rolls the node back: ``1`` (id suffix ``-broken``): its
gateway starts but ``/health`` answers 503; ``exit`` (id suffix ``-broken-exit``): its gateway
exits at start-up, before it serves anything.
"""

from __future__ import annotations

import compileall
import functools
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fleet.core.atomic import publish_dir, replace_atomic
from fleet.core.errors import DeployError
from fleet.core.release_marker import BROKEN_ENV, BROKEN_MARKER, RELEASE_FILE, Broken
from fleet.core.validate import ValidationError
from fleet.node.nodectl import RELEASE_ID_FORM, RELEASE_ID_RE

CACHE_ENV = "FLEET_CACHE_DIR"
ARTIFACT_ENV = "FLEET_RELEASE_ARTIFACT"
ID_ENV = "FLEET_RELEASE_ID"
DEFAULT_CACHE = Path("/var/cache/sovereign-fleet")
SHIPPED = ("fleet/__init__.py", "fleet/core", "fleet/node", "bus")
"""What a release ships of this repository: the code a node runs (``lint-imports`` keeps it
from importing anything else of ours)."""
SHIPPED_PACKAGES = ("fleet", "bus")
"""The top-level packages ``SHIPPED`` makes in a release's ``site/``."""
RECEIVER_CODE = ("fleet",)
"""What the webhook receiver runs beyond a release (``fleet webhook serve``, the rollout, the
status and drift probes), shipped to its node only ..."""
RECEIVER_LEAVES_OUT = ("fleet/lab",)
"""... but the lab (systemd-nspawn on an operator's machine)."""
ENTRY_POINTS: dict[str, str] = {
    "fleet/serving.py": '"""gunicorn settings of the gateway unit: fleet.core.serving."""\n'
                        "from fleet.core.serving import *  # noqa: F403\n",
    "fleet/gateway/__init__.py": '"""The units\' entry to the gateway: fleet.node.gateway."""\n',
    "fleet/gateway/wsgi.py": "from fleet.node.gateway.wsgi import app\n\n__all__ = [\"app\"]\n",
    "fleet/runtime/__init__.py": '"""The units\' entry to the runtime: fleet.node.agent."""\n',
    "fleet/runtime/__main__.py": "import sys\n\nfrom fleet.node.agent import main\n\n"
                                 "sys.exit(main())\n",
}
"""What the agents' units run (``python:fleet.serving``, ``fleet.gateway.wsgi:app``,
``-m fleet.runtime``), written into every release's ``site/``: a rollback switches releases,
not units, and releases built before the code was laid out by where it runs (``fleet/node``,
``fleet/core``) have these modules themselves, so one unit runs either."""
NODE_REQUIREMENTS = ("Flask", "gunicorn", "gevent", "PyYAML", "requests", "cryptography",
                     "jsonschema")  # tool argument schemas (Draft 2020-12)
"""What node code needs (gevent: gunicorn's worker, :mod:`fleet.core.serving`; it brings greenlet
and zope.*)."""
DEPLOY_TOOL_REQUIREMENTS = ("pyinfra", "pyrage")
"""Only on the node running the webhook receiver: its deploys (pyinfra), its age identity and
the sealed secrets file its deploys open (pyrage, abi3 wheels for every node Python)."""
NODE_PYTHONS = ("3.11", "3.12", "3.13")
"""The node interpreters a release carries compiled modules for (preflight refuses others)."""


def node_platform(python: str) -> tuple[str, ...]:
    """pip's target options for a node interpreter ``python`` (``"3.13"``): its own ABI and
    the stable ABI (``abi3``: ``cryptography`` ships one wheel for every CPython >= 3.11), on
    glibc 2.17 or 2.28 (gevent's and greenlet's wheels; Debian 12 has 2.36)."""
    return ("--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
            "--python-version", python,
            "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}", "--abi", "abi3")


NODE_PLATFORM = tuple(arg for python in NODE_PYTHONS for arg in node_platform(python))
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


@dataclass(frozen=True)
class Release:
    """A built release: its id and its tarball on the controller."""

    id: str
    path: Path
    broken: Broken = Broken.NO
    """How it was built broken on purpose, if it was (see the module)."""


def repo_root() -> Path:
    """The checkout the ``fleet`` package was imported from."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where built releases and dependency trees are cached (``$FLEET_CACHE_DIR/release``)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE) / "release"


def broken_requested(env: Mapping[str, str] | None = None) -> Broken:
    """The deliberately broken release ``FLEET_BROKEN_RELEASE`` in ``env`` (default: this
    process's) asks for (``Broken.NO``: a normal one)."""
    return Broken.asked((os.environ if env is None else env).get(BROKEN_ENV, ""))


def shipped_files(root: Path, shipped: tuple[str, ...] = SHIPPED,
                  leaves_out: tuple[str, ...] = ()) -> list[Path]:
    """Source files that go into a release (or the paths ``shipped`` name, but those under
    ``leaves_out``), relative to ``root``, sorted."""
    files: list[Path] = []
    for name in shipped:
        base = root / name
        for path in [base] if base.is_file() else base.rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and not _SKIP_DIRS.intersection(relative.parts) \
                    and path.suffix not in (".pyc", ".pyo") \
                    and not any(relative.is_relative_to(out) for out in leaves_out):
                files.append(relative)
    return sorted(files)


def requirements(names: tuple[str, ...] = NODE_REQUIREMENTS) -> list[str]:
    """The node's requirements, pinned to the versions installed on the controller."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def content_hash(root: Path) -> str:
    """sha256 over the shipped sources and the pinned requirements."""
    digest = hashlib.sha256()
    digest.update(f"pythons {' '.join(NODE_PYTHONS)}\n".encode())
    for line in requirements():
        digest.update(f"req {line}\n".encode())
    _hash_files(digest, root, shipped_files(root))
    for path, text in ENTRY_POINTS.items():
        digest.update(f"entry {path}\n{text}".encode())
    return digest.hexdigest()


def _hash_files(digest: Any, root: Path, files: list[Path]) -> None:
    for relative in files:
        digest.update(f"file {relative.as_posix()}\n".encode())
        digest.update(hashlib.sha256((root / relative).read_bytes()).digest())


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def release_id(root: Path | None = None, broken: Broken | None = None) -> str:
    """``<sha12>``, ``<sha12>-dirty-<hash8>`` or ``nogit-<hash12>``; ``-broken`` or
    ``-broken-exit`` if asked (``broken``: see :class:`Broken`)."""
    root = root or repo_root()
    broken = broken_requested() if broken is None else broken
    sha = _git(root, "rev-parse", "HEAD")
    if not sha:
        ident = f"nogit-{content_hash(root)[:12]}"
    else:
        paths = [*SHIPPED, "pyproject.toml"]
        dirty = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *paths)
        ident = sha[:12] if not dirty else f"{sha[:12]}-dirty-{content_hash(root)[:8]}"
    return f"{ident}{broken.id_suffix}"


def deps_key(names: tuple[str, ...] = NODE_REQUIREMENTS) -> str:
    """Name of the cached dependency tree of ``names`` at the current pins
    (``<cache>/release/deps/<key>``; a tree holding ``.complete`` is never fetched again)."""
    pins = requirements(names)
    return hashlib.sha256("\n".join([*pins, *NODE_PLATFORM]).encode()).hexdigest()[:16]


def _deps_dir(names: tuple[str, ...] = NODE_REQUIREMENTS) -> Path:
    """Unpacked node dependencies for the current pins, installed once and cached."""
    pins = requirements(names)
    key = deps_key(names)
    target = cache_dir() / "deps" / key
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        first, *others = NODE_PYTHONS
        _pip_target(staging, first, pins)
        exact = installed_versions(staging)  # the same versions for every interpreter
        for python in others:
            extra = staging / f".py{python}"
            _pip_target(extra, python, exact, "--no-deps")
            _merge_missing(extra, staging)
            shutil.rmtree(extra)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / ".complete").write_text("\n".join(pins) + "\n")
    if not publish_dir(staging, target):  # another build finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pip_target(target: Path, python: str, pins: list[str], *options: str) -> None:
    """``pip install --target`` of binary wheels for node interpreter ``python``."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-warn-script-location", "--target", str(target), "--only-binary=:all:",
               *node_platform(python), *options, *pins]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError(
            f"pip could not fetch the node dependencies for Python {python} "
            f"({', '.join(pins)}): {done.stderr.strip().splitlines()[-1:] or done.returncode}",
            hint="Check that PyPI is reachable from the controller, then deploy again.",
        )


def installed_versions(site: Path) -> list[str]:
    """``name==version`` of every distribution installed in ``site`` (its ``*.dist-info``)."""
    pins = []
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        pins.append(f"{name}=={version}")
    return pins


def _merge_missing(source: Path, dest: Path) -> None:
    """Copy into ``dest`` every file of ``source`` it lacks: another interpreter's compiled
    modules (the pure-Python files are the same versions, already there)."""
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_file() and not target.exists() and not path.relative_to(source).parts[0] \
                .endswith(".dist-info") and path.relative_to(source).parts[0] != "bin":
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """root-owned, readable by all (0755 dirs and executables, 0644 files), whatever the
    builder's umask (the receiver builds releases under ``UMask=0077``)."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
    return info


def _staged(root: Path, files: list[Path], scratch: Path) -> Path:
    """``files`` of ``root`` copied into ``scratch/src``, byte-compiled; returns that folder."""
    source = scratch / "src"
    for relative in files:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, source / relative)
    compileall.compile_dir(str(source), quiet=1, workers=1)
    return source


def release_code(root: Path, scratch: Path) -> Path:
    """What a release's ``site/`` holds of ours, laid out in ``scratch/src`` (returned):
    the shipped files (byte-compiled) and the units' :data:`ENTRY_POINTS`. On
    ``PYTHONPATH`` (with the dependencies) it runs what a node's units run."""
    source = _staged(root, shipped_files(root), scratch)
    for path, text in ENTRY_POINTS.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text, encoding="utf-8")
    return source


def _write_artifact(root: Path, ident: str, broken: Broken, dest: Path) -> None:
    deps = _deps_dir()
    with tempfile.TemporaryDirectory(prefix="fleet-release-") as scratch:
        source = release_code(root, Path(scratch))
        partial = dest.with_name(f".{dest.name}.{os.getpid()}")
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            _add_deps(tar, deps)
            for package in SHIPPED_PACKAGES:
                if (source / package).exists():
                    tar.add(source / package, arcname=f"site/{package}", filter=_reset_owner)
            _add_bytes(tar, f"site/{RELEASE_FILE}", f"{ident}\n".encode())
            if broken:
                _add_bytes(tar, f"site/{BROKEN_MARKER}", f"{broken.value}\n".encode())
        replace_atomic(partial, dest)


def _add_deps(tar: tarfile.TarFile, deps: Path) -> None:
    """Add an unpacked dependency tree to ``tar`` under ``site/``."""
    for entry in sorted(deps.iterdir()):
        if entry.name not in (".complete", "bin"):
            tar.add(entry, arcname=f"site/{entry.name}", filter=_reset_owner)


@functools.cache
def build_deploy_tools() -> Release:
    """The deploy tools (pyinfra and its dependencies, ``site/``) for the node running the
    webhook receiver, so its deploys run there; id ``deploy-tools-<hash12>`` of the pins.

    Shipped apart from the release, to that node only: 30 MB compressed (the release is 25 MB),
    uploaded again only when the pins change."""
    deps = _deps_dir(DEPLOY_TOOL_REQUIREMENTS)
    ident = f"deploy-tools-{deps.name[:12]}"
    dest = cache_dir() / "artifacts" / f"{ident}.tar.gz"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.{os.getpid()}")
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            _add_deps(tar, deps)
        replace_atomic(partial, dest)
    return Release(id=ident, path=dest)


@functools.cache
def build_receiver_code(root: Path | None = None) -> Release:
    """The webhook receiver's code for the node running it: ``RECEIVER_CODE`` but
    ``RECEIVER_LEAVES_OUT`` (the CLI, the controller's deploy half and probes, the receiver, the
    dashboard it shows, and :mod:`fleet.core` and :mod:`fleet.node` again: one package), as
    ``fleet/`` at the top of the tarball; id ``receiver-<hash12>`` of its files.

    Unpacked as ``<release>/<its id>`` beside the release's ``site/`` (and removed with it),
    first on the receiver's ``PYTHONPATH``: the release gives ``bus`` and the dependencies."""
    root = root or repo_root()
    files = shipped_files(root, RECEIVER_CODE, RECEIVER_LEAVES_OUT)
    digest = hashlib.sha256()
    _hash_files(digest, root, files)
    ident = f"receiver-{digest.hexdigest()[:12]}"
    dest = cache_dir() / "artifacts" / f"{ident}.tar.gz"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fleet-receiver-") as scratch:
            source = _staged(root, files, Path(scratch))
            partial = dest.with_name(f".{dest.name}.{os.getpid()}")
            with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
                for package in RECEIVER_CODE:
                    tar.add(source / package, arcname=package, filter=_reset_owner)
            replace_atomic(partial, dest)
    return Release(id=ident, path=dest)


@functools.cache
def build_release(root: Path | None = None, broken: Broken | None = None) -> Release:
    """Build (or reuse from the cache) the release tarball of ``root``; one build per process.

    A runner that built the release already passes it on in ``$FLEET_RELEASE_ID`` and
    ``$FLEET_RELEASE_ARTIFACT`` (see :func:`release_env`)."""
    broken = broken_requested() if broken is None else broken
    given, artifact = os.environ.get(ID_ENV), os.environ.get(ARTIFACT_ENV)
    if root is None and given and artifact and Path(artifact).is_file():
        return Release(id=given, path=Path(artifact), broken=broken)
    root = root or repo_root()
    ident = release_id(root, broken)
    key = content_hash(root)[:12]
    dest = cache_dir() / "artifacts" / f"{ident}-{key}.tar.gz"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_artifact(root, ident, broken, dest)
    return Release(id=ident, path=dest, broken=broken)


def release_env(release: Release) -> dict[str, str]:
    """Environment that hands a built release to child deploy processes."""
    env = {ID_ENV: release.id, ARTIFACT_ENV: str(release.path)}
    if release.broken:
        env[BROKEN_ENV] = release.broken.asked_with
    return env


def check_release_id(value: str) -> str:
    """``value`` if it is a release id (``fleet rollback --to``), else :class:`ValidationError`."""
    if not isinstance(value, str) or not RELEASE_ID_RE.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a release id ({RELEASE_ID_FORM})",
            hint="Pass a release id as `fleet status` or the run records show it, "
                 "e.g. --to 444a224b3f00.")
    return value
