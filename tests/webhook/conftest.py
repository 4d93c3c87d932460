"""Fixtures of the webhook tests: settings in a temp state dir, a real git fleet repo, the app,
and a real gunicorn serving it on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from fleet.webhook import create_app
from fleet.webhook.config import Settings, load_settings
from tests.ports import free_port
from tests.waiting import wait_for
from tests.webhook.forge import GITLAB_TOKEN, READ_TOKEN, SECRET, signed_push

REPO = Path(__file__).resolve().parents[2]
# the receiver's production worker model (gevent with timeouts), as a gunicorn config module
PRODUCTION_WORKERS = ("--config", "python:fleet.webhook.serving")
STANDIN = Path(__file__).with_name("standin_deploy.py")
GIT_ID = ["-c", "user.name=Test", "-c", "user.email=test@example.org"]
# a cold start (a fresh venv, two busy cores) takes seconds, rarely tens of them: allow
# minutes, since a receiver that exits or fails its first answer fails the wait at once
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0  # gunicorn's graceful_timeout (20 s) and a loaded machine's margin


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git and return its stdout (fails the test on error)."""
    done = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@dataclass
class FleetRepo:
    """A working clone and the bare repository it pushes to (what a forge would host)."""

    work: Path
    bare: Path

    def commit(self, message: str) -> str:
        """Commit a change and return its sha."""
        with (self.work / "CHANGES").open("a") as handle:
            handle.write(message + "\n")
        git("add", "CHANGES", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_tag(self, tag: str, sha: str) -> None:
        """``git tag -f TAG SHA`` and force-push it, like moving PROD."""
        git("tag", "-f", tag, sha, cwd=self.work)
        git("push", "-q", "--force", "origin", "HEAD:refs/heads/main", f"refs/tags/{tag}",
            cwd=self.work)


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    """A small fleet repo in a bare repository (``file://`` URL via ``.bare``)."""
    bare, work = tmp_path / "fleet.git", tmp_path / "fleet-work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("clone", "-q", str(bare), str(work))
    repo = FleetRepo(work=work, bare=bare)
    repo.commit("first")
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    return repo


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    """Where the stand-in deploy appends one JSON line per run."""
    return tmp_path / "deploys.jsonl"


@pytest.fixture
def env(tmp_path: Path, record_file: Path) -> dict[str, str]:
    """Receiver settings as environment variables, deploying with the stand-in command from
    the ``fleet_repo`` fixture's bare repository (request that fixture to create it)."""
    return {
        "FLEET_WEBHOOK_SECRET": SECRET, "FLEET_GITLAB_TOKEN": GITLAB_TOKEN,
        "FLEET_READ_TOKEN": READ_TOKEN, "FLEET_REPO_URL": f"file://{tmp_path / 'fleet.git'}",
        "FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_HEALTH_CHECK": "off",
        "FLEET_DEPLOY_COMMAND": f"{sys.executable} {STANDIN}",
        "STANDIN_RECORD": str(record_file), "STANDIN_SLEEP": "0", "STANDIN_HOSTS": "alpha,beta",
    }


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from ``env`` (also exported, as the deploy's environment reads them)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(env)


@pytest.fixture
def app(settings: Settings) -> Flask:
    """The receiver without its background thread (tests drain the queue themselves)."""
    return create_app({"TESTING": True, "SETTINGS": settings, "DISPATCH": False})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the receiver."""
    return app.test_client()


def auth() -> dict[str, str]:
    """The read API's Authorization header."""
    return {"Authorization": f"Bearer {READ_TOKEN}"}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The stand-in deploy's JSON lines."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@dataclass
class Server:
    """A gunicorn serving ``webhook_app:app`` on loopback."""

    env: dict[str, str]
    workers: int = 2
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more gunicorn options, e.g. PRODUCTION_WORKERS

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        """Start gunicorn and wait until it answers."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *self.args, "--workers", str(self.workers),
             "--bind", f"127.0.0.1:{self.port}", "webhook_app:app"],
            cwd=REPO, env={**os.environ, **self.env}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

        def answers() -> bool:
            try:
                requests.get(f"{self.url}/openapi.json", timeout=5).close()
                return True
            except requests.RequestException:
                return False

        wait_for(answers, 30, "gunicorn to answer")
        return self

    def pids(self) -> list[int]:
        """The master and its workers."""
        assert self.process is not None
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                                  text=True, check=False).stdout.split()
        return [self.process.pid, *map(int, children)]

    def kill(self) -> None:
        """SIGKILL the master and the workers (not the deploy they started)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop gunicorn (and anything left in its session): SIGTERM, which gives open
        requests gunicorn's ``graceful_timeout`` (20 s, e.g. slow clients holding half a
        request), then SIGKILL for what is left after a margin on top of that."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


@pytest.fixture
def serve(env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    """Start gunicorn servers of the receiver; all are stopped at teardown."""
    servers: list[Server] = []

    def start(workers: int = 2, args: tuple[str, ...] = (), **overrides: str) -> Server:
        server = Server({**env, **overrides}, workers=workers, args=args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def child_pids(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                           check=False).stdout.split()
    return [int(child) for child in found]


def web_workers(master: int) -> list[int]:
    """A receiver's gunicorn web workers: its master's children but the dispatcher."""
    found = []
    for pid in child_pids(master):
        with contextlib.suppress(FileNotFoundError):  # a dispatcher that lost its race
            if b"dispatch" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


class Receiver:
    """``fleet webhook serve`` on loopback in its own session (stderr in ``log``, beside the
    state dir), with environment ``env``; ready once a web worker answers, failed at once if
    it exits."""

    def __init__(self, env: dict[str, str], workers: int = 2,
                 deploy_timeout: float = 120.0) -> None:
        self.port, self.deploy_timeout = free_port(), deploy_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env["FLEET_STATE_DIR"]).parent / f"receiver-{self.port}.log"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleet", "webhook", "serve", "--port", str(self.port),
                 "--workers", str(workers)], env=env, cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        wait_for(self.ready, timeout=START_TIMEOUT, what="fleet webhook serve to answer")

    def ready(self) -> bool:
        """Whether a web worker answers (an AssertionError with its stderr if it exited)."""
        if self.process.poll() is not None:
            raise AssertionError(f"fleet webhook serve exited with {self.process.returncode}:"
                                 f"\n{self.errors()[-3000:]}")
        try:
            return requests.get(f"{self.url}/openapi.json", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or slow to answer
            return False

    def errors(self) -> str:
        """What it wrote to stderr so far."""
        return self.log.read_text(errors="replace")

    def post(self, body: bytes, headers: dict[str, str], forge: str = "gitea") -> int:
        """Deliver a push; the queued run's id."""
        answer = requests.post(f"{self.url}/hooks/{forge}", data=body, headers=headers,
                               timeout=30)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued", answer.json()
        return int(answer.json()["run_id"])

    def push(self, sha: str, tag: str = "PROD") -> int:
        """Deliver a signed Gitea push of ``tag`` at ``sha``; the queued run's id."""
        return self.post(*signed_push("gitea", f"refs/tags/{tag}", sha))

    def run(self, run_id: int) -> dict[str, Any]:
        """``GET /runs/<id>``."""
        return dict(requests.get(f"{self.url}/runs/{run_id}", headers=auth(),
                                 timeout=30).json())

    def finished(self, run_id: int) -> dict[str, Any] | None:
        """The run once it is neither queued nor running (None before, or while the
        receiver is too busy to answer)."""
        try:
            run = self.run(run_id)
        except requests.RequestException:
            return None
        return None if run["status"] in ("queued", "running") else run

    def wait(self, run_id: int) -> dict[str, Any]:
        """The run once it has ended (within ``deploy_timeout``)."""
        return dict(wait_for(lambda: self.finished(run_id), timeout=self.deploy_timeout,
                             what=f"run {run_id} to end"))

    def workers(self) -> list[int]:
        """The gunicorn master's web workers (its other child is the dispatcher)."""
        return web_workers(self.process.pid)

    def children(self) -> list[int]:
        """The gunicorn master's child processes (web workers and the dispatcher)."""
        return child_pids(self.process.pid)

    def stop(self) -> None:
        """SIGTERM its whole session and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


@pytest.fixture
def receivers(env: dict[str, str]) -> Iterator[Callable[..., Receiver]]:
    """Start ``fleet webhook serve`` processes (``env`` with overrides); all are stopped at
    teardown."""
    started: list[Receiver] = []

    def start(**overrides: str) -> Receiver:
        receiver = Receiver({**os.environ, **env, **overrides})
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()
