"""A schedule's service (``python3 -m fleet.node.schedule``, as its unit runs it) against a
real gateway: the prompt arrives in the agent's own inbox as a request signed by the agent
itself, exactly, once per run (systemd's invocation id is the message id)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bus.keys import PRIVATE_KEY_ENV
from fleet.node import schedule
from fleet.node.runtime.loop import Runtime
from tests.bus.conftest import KEYS, Fleet
from tests.waiting import wait_for

PROMPT = "Say \"hi\" 50% $HOME \\ `id` ; # é 日本"


def run_schedule(url: str, invocation: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "FLEET_AGENT": "bezalel", PRIVATE_KEY_ENV: KEYS["bezalel"], "FLEET_GATEWAY_URL": url,
           "FLEET_SCHEDULE": "nightly", "FLEET_SCHEDULE_PROMPT": PROMPT,
           "INVOCATION_ID": invocation, **extra}
    return subprocess.run([sys.executable, "-m", "fleet.node.schedule"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_run_posts_one_signed_request_into_the_agents_own_inbox(fleet: Fleet) -> None:
    gateway = fleet.start("bezalel")[0]
    invocation = uuid.uuid4().hex
    done = run_schedule(gateway.url, invocation)
    ident = f"schedule-nightly-{invocation}"
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"schedule {ident}: request queued for bezalel\n", "")
    again = run_schedule(gateway.url, invocation)  # the same run retried: queued once
    assert again.returncode == 0, again.stderr
    with gateway.client() as me:
        def arrived() -> list[dict[str, Any]]:
            return me.messages(type="request")["messages"]
        wait_for(lambda: len(arrived()) == 1, 20, lambda: "the request in the inbox")
        message = arrived()[0]
    assert (message["from"], message["to"], message["id"], message["correlation_id"],
            message["reply_to"], message["payload"]) == (
        "bezalel", "bezalel", ident, ident, "bezalel",
        {"prompt": PROMPT, "schedule": "nightly"})


def test_with_a_capability_the_request_is_one_the_runtime_routes(fleet: Fleet) -> None:
    gateway = fleet.start("bezalel")[0]
    done = run_schedule(gateway.url, uuid.uuid4().hex, FLEET_SCHEDULE_CAPABILITY="code")
    assert done.returncode == 0, done.stderr
    with gateway.client() as me:
        wait_for(lambda: me.messages(type="request")["messages"], 20, lambda: "the request")
        message = me.messages(type="request")["messages"][0]
    assert message["payload"] == {"prompt": PROMPT, "schedule": "nightly", "capability": "code"}
    runtime = Runtime.__new__(Runtime)  # only its routing rule is asked
    runtime.route = lambda capability, prompt: {}
    assert runtime.routes(message) is True


def test_a_gateway_that_never_answers_fails_the_run_with_one_line(tmp_path: Path,
                                                                  monkeypatch: Any) -> None:
    monkeypatch.setattr(schedule, "SEND_RETRIES", 0)
    code = schedule.main({"FLEET_AGENT": "bezalel", PRIVATE_KEY_ENV: KEYS["bezalel"],
                          "FLEET_GATEWAY_URL": "http://127.0.0.1:9", "FLEET_SCHEDULE": "x",
                          "FLEET_SCHEDULE_PROMPT": "p"})
    assert code == 1


def test_a_bad_schedule_name_or_prompt_is_refused_before_any_request(
        capsys: Any) -> None:
    env = {"FLEET_AGENT": "bezalel", PRIVATE_KEY_ENV: KEYS["bezalel"],
           "FLEET_GATEWAY_URL": "http://127.0.0.1:9"}
    assert schedule.main({**env, "FLEET_SCHEDULE": "X;id", "FLEET_SCHEDULE_PROMPT": "p"}) == 1
    assert schedule.main({**env, "FLEET_SCHEDULE": "x", "FLEET_SCHEDULE_PROMPT": " "}) == 1
    assert capsys.readouterr().err == (
        "fleet schedule: FLEET_SCHEDULE 'X;id' is not a schedule name (1-31 lowercase "
        "letters, digits and '-', starting with a letter)\n"
        "fleet schedule: FLEET_SCHEDULE_PROMPT ' ' is not a non-empty string (the prompt the "
        "agent is given)\n")
    assert schedule.message_id("x", "not hex!") != "schedule-x-not hex!"
