"""The receiver's access log (what ``fleet webhook serve`` writes) never holds a credential:
not the HTTP Basic user name, where a browser user may type the read token, nor the token."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.ports import free_port
from tests.waiting import wait_for
from tests.webhook.conftest import REPO, START_TIMEOUT, STOP_TIMEOUT
from tests.webhook.forge import READ_TOKEN

TYPED_AS_USER = "tok-typed-as-user-0123456789abcdef"
SERVE = ("import sys; from fleet.core.serving import FactoryServer; "
         "FactoryServer('fleet.webhook:create_app', {'bind': sys.argv[1], 'workers': 1, "
         "'accesslog': sys.argv[2]}).run()")


@pytest.fixture
def served(env: dict[str, str], fleet_repo: object, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The receiver under gunicorn with the fleet's serving options and an access log file;
    yields (URL, access log)."""
    log = tmp_path / "access.log"
    bind = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([sys.executable, "-c", SERVE, bind, str(log)], cwd=REPO,
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://{bind}"

    def answers() -> bool:
        assert process.poll() is None, "the receiver exited"
        try:
            return requests.get(f"{url}/openapi.json", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(answers, timeout=START_TIMEOUT, what="the receiver to answer")
        yield url, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT)


def test_the_access_log_holds_no_credentials(served: tuple[str, Path]) -> None:
    url, log = served
    basic = base64.b64encode(f"{TYPED_AS_USER}:{READ_TOKEN}".encode()).decode()
    answer = requests.get(f"{url}/runs?limit=3", timeout=10,
                          headers={"Authorization": f"Basic {basic}"})
    assert answer.status_code == 200
    wrong = requests.get(f"{url}/healthz", timeout=10,
                         headers={"Authorization": f"Basic {basic[:-4]}AAAA"})
    assert wrong.status_code == 401

    def logged() -> list[str]:
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if "/runs?" in line or "/healthz" in line]

    wait_for(lambda: len(logged()) == 2, timeout=30, what="both requests in the access log")
    text = log.read_text()
    assert TYPED_AS_USER not in text and READ_TOKEN not in text and basic not in text
    runs_line = next(line for line in text.splitlines() if "/runs?limit=3" in line)
    assert runs_line.startswith("127.0.0.1 - - [")
    assert '] "GET /runs?limit=3 HTTP/1.1" 200 ' in runs_line
