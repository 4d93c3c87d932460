"""The shared Debian base rootfs of each release (bookworm, trixie): debootstrap once, cache a
zstd tarball, unpack.

The cache key is a hash of the suite, the package list and the customisation version, so
changing any of them builds a new base. A lock file keeps concurrent builds apart. The
packages debootstrap fetched are kept too (``debs-<suite>/``, only those of the last build), so
a new base downloads only what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from fleet.core.atomic import publish_dir, replace_atomic
from fleet.core.errors import LabError
from fleet.lab.commands import Cancelled, run, unmount_all
from fleet.lab.paths import cache_dir, lab_lock
from fleet.lab.steps import long_step

SUITE = "bookworm"
SUITES = ("bookworm", "trixie")
"""Debian releases a lab node can run (``fleet lab up --release``): 12 and 13."""
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "sudo",
    "iproute2", "ca-certificates", "curl", "procps", "netbase", "iputils-ping", "rsync",
    "git",  # the webhook receiver fetches the fleet repo on its node
)
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "console-getty.service", "systemd-networkd-wait-online.service",
)
ADMIN_USER = "fleet-admin"
CUSTOMISATION_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SSHD_DROPIN = """\
# Written by fleet lab: one ed25519 host key per node, keys only.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""


def cache_key(suite: str = SUITE, packages: tuple[str, ...] = PACKAGES) -> str:
    """Short hash of everything that shapes the base image."""
    text = "\n".join([suite, CUSTOMISATION_VERSION, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_name(suite: str = SUITE, packages: tuple[str, ...] = PACKAGES) -> str:
    """File name stem of the cached base (``rootfs-bookworm-<key>``)."""
    return f"rootfs-{suite}-{cache_key(suite, packages)}"


def debian_mirror(sources_dir: Path = SOURCES_DIR, suite: str = SUITE) -> str:
    """The Debian mirror apt already uses for ``suite`` (deb822 or one-line sources)."""
    for path in sorted(sources_dir.glob("*.sources")):
        for stanza in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            uris = fields.get("URIs", "").split()
            if uris and suite in fields.get("Suites", "").split() and "debian" in uris[0]:
                return uris[0]
    for path in [sources_dir.parent / "sources.list", *sorted(sources_dir.glob("*.list"))]:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    return DEFAULT_MIRROR


def debs_dir(suite: str = SUITE) -> Path:
    """The package files of ``suite``'s last base build (debootstrap's ``--cache-dir``)."""
    return cache_dir() / f"debs-{suite}"


def check_suite(suite: str) -> str:
    """``suite`` if the lab can boot it, else :class:`LabError` naming the ones it can."""
    if suite not in SUITES:
        raise LabError(f"{suite!r} is not a Debian release the lab boots ({', '.join(SUITES)})",
                       hint="Pass --release bookworm or --release trixie.")
    return suite


def ensure_base(progress: Callable[[str], None] = lambda _: None, suite: str = SUITE,
                cancel: threading.Event | None = None) -> Path:
    """The unpacked base rootfs, built or unpacked from the tarball cache if needed.

    The base is unpacked beside its final name and renamed into place, so an existing base
    is always complete; it is never touched again (running labs use it as overlay lower).
    Setting ``cancel`` stops a build or unpack in progress (its whole process group: nothing
    of debootstrap is left running), cleans up after it and raises :class:`Cancelled`.
    """
    root = cache_dir()
    name = base_name(check_suite(suite))
    base = root / name
    tarball = root / f"{name}.tar.zst"
    if base.is_dir():
        return base
    with lab_lock(root / "rootfs.lock"):
        if base.is_dir():
            return base
        if not tarball.exists():
            _build_tarball(tarball, progress, suite, cancel)
        progress(f"unpacking {tarball}")
        tmp = root / f"{name}.unpack"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(tmp), "--numeric-owner"],
                timeout=600, cancel=cancel)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, base)  # under the lock: nobody else builds it
    return base


def _build_tarball(tarball: Path, progress: Callable[[str], None], suite: str = SUITE,
                   cancel: threading.Event | None = None) -> None:
    # apt here may list only bookworm: its Debian mirror serves every release
    mirror = debian_mirror(suite=suite)
    if mirror == DEFAULT_MIRROR:
        mirror = debian_mirror()
    build = tarball.parent / f"{tarball.name}.build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    debs = debs_dir(suite)
    debs.mkdir(exist_ok=True)
    partial = tarball.with_name(tarball.name + ".part")
    try:
        with long_step(progress, f"rootfs-{suite}",
                       f"building the {suite} base rootfs with debootstrap from {mirror}"):
            run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 f"--cache-dir={debs}", suite, str(build), mirror], timeout=1800,
                cancel=cancel)
            prune_debs(debs, build / "var/cache/apt/archives")
            customise(build)
        with long_step(progress, f"rootfs-{suite}-pack", f"packing the {suite} rootfs"):
            run(["tar", "--zstd", "-cpf", str(partial), "--numeric-owner", "-C", str(build),
                 "."], timeout=1800, cancel=cancel)
        replace_atomic(partial, tarball)
    except Cancelled:
        progress(f"building the {suite} base rootfs was cancelled; cleaning up")
        raise
    except LabError as exc:
        raise LabError(f"building the lab rootfs failed: {exc}",
                       hint=f"Check that {mirror} is reachable; the log is in "
                            f"{build}/debootstrap/debootstrap.log if debootstrap got that far.",
                       ) from None
    finally:
        unmount_all(build)  # debootstrap mounts /proc and /sys inside the target
        shutil.rmtree(build, ignore_errors=True)
        partial.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            debs.rmdir()  # only when empty: nothing was fetched
    progress(f"base rootfs cached as {tarball}")


def prune_debs(debs: Path, used: Path) -> None:
    """Remove the package files in ``debs`` that are not in ``used`` (older versions); a
    rootfs build leaves a copy of each package it installed in ``var/cache/apt/archives``."""
    keep = {path.name for path in used.glob("*.deb")}
    if not keep:
        return  # nothing to tell old from new by
    for path in debs.glob("*.deb"):
        if path.name not in keep:
            path.unlink()


def customise(root: Path) -> None:
    """Strip identity, mask noisy units, configure sshd and add the sudo user."""
    (root / "etc/machine-id").write_text("")
    for path in [root / "etc/hostname", root / "var/lib/dbus/machine-id",
                 *root.glob("etc/ssh/ssh_host_*")]:
        if path.is_symlink() or path.exists():
            path.unlink()
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in MASKED_UNITS:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/fleet-lab.conf").write_text(SSHD_DROPIN)
    run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", ADMIN_USER])
    sudoers = root / f"etc/sudoers.d/{ADMIN_USER}"
    sudoers.write_text(f"{ADMIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    run(["chroot", str(root), "apt-get", "clean"])
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
