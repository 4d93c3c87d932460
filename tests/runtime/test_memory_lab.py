"""Conversation memory on the lab with the real model server (SmolLM2 135M Instruct): the
second question of a conversation reaches the model with the first turn before it (the
server's prompt token count says so), and the turns outlive a restart of the agent's units,
a deploy of a new release and ``fleet rollback``. One lab, tests in file order."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab import model
from tests.deploy.conftest import Fleet, make_fleet
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root
from tests.runtime.test_runtime_lab import ASKER, RUNTIME, WORKER, token_count
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
GATEWAY = f"fleet-agent-{WORKER}.service"
CONVERSATION = "lab memory 1"
FIRST = "My favourite colour is green. Say OK."
SECOND = "What is my favourite colour?"
THIRD = "And my favourite colour again?"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A lab of the example registry with the model server, deployed; every agent thinks
    with it (short answers, temperature 0)."""
    skip_unless_root()
    claimed = claim_test_lab("memory")
    try:
        lab.down(claimed.lab)
        try:
            registry = load_registry(EXAMPLE_REGISTRY)
            short = {name: replace(agent, config={"max_tokens": 48, "temperature": 0})
                     for name, agent in registry.agents.items()}
            path = lab.up(replace(registry, agents=short), lab=claimed.lab, with_model=True)
            found = make_fleet(path, tmp_path_factory.mktemp("memory"))
            done = found.run("deploy")
            assert done.returncode == 0, done.stdout + done.stderr
            yield found
        finally:
            lab.down(claimed.lab)
    finally:
        claimed.release()


def ask(fleet: Fleet, prompt: str, conversation: str | None = None) -> dict[str, Any]:
    """``fleet ask --capability code`` (the worker is the one coder): the answer's payload."""
    extra = ("--conversation", conversation) if conversation else ()
    done = fleet.run("ask", "--capability", "code", "--json", "--timeout", "300", *extra,
                     prompt)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["agent"] == WORKER, answer
    payload: dict[str, Any] = answer["payload"]
    assert "error" not in payload and payload["tokens"] > 0, payload
    return payload


def chatml(messages: list[tuple[str, str]]) -> str:
    """The ChatML rendering of ``messages`` (role, content) up to the assistant's turn."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n"
                   for role, content in messages) + "<|im_start|>assistant\n"


def shown_turns(fleet: Fleet) -> list[dict[str, Any]]:
    """The conversation's turns as ``fleet memory show --json`` lists them."""
    done = fleet.run("memory", "show", WORKER, CONVERSATION, "--peer", ASKER, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def healthy(fleet: Fleet) -> bool:
    url = load_registry(fleet.registry).get(WORKER).health_endpoint
    try:
        with requests.get(url, timeout=10) as answer:
            return answer.status_code == 200 and answer.json()["status"] == "ok"
    except (requests.RequestException, ValueError, KeyError):
        return False


def test_the_second_question_reaches_the_model_with_the_first_turn(fleet: Fleet) -> None:
    lab_path = fleet.registry.parent
    if model.served_by(lab_path) is not model.SMOLLM2:
        pytest.skip("the lab serves a model whose chat format drops the system message")
    soul = fleet.ssh(WORKER, f"cat /etc/fleet/{WORKER}/soul.md")
    alone = ask(fleet, SECOND)
    first = ask(fleet, FIRST, CONVERSATION)
    second = ask(fleet, SECOND, CONVERSATION)
    turn = [("user", FIRST), ("assistant", first["text"])]
    first_turn_tokens = token_count(lab_path, chatml(turn)) - token_count(lab_path, chatml([]))
    print(f"\nprompt_tokens: {alone['prompt_tokens']} one-off, {second['prompt_tokens']} in "
          f"the conversation (the first turn: {first_turn_tokens} tokens); answers: "
          f"{first['text']!r}, then {second['text']!r}")
    assert second["prompt_tokens"] >= alone["prompt_tokens"] + first_turn_tokens
    assert second["prompt_tokens"] == token_count(lab_path, chatml(
        [("system", soul), *turn, ("user", SECOND)]))  # exactly soul, first turn, question
    stored = shown_turns(fleet)
    assert [(t["prompt"], t["answer"]) for t in stored] == [
        (FIRST, first["text"]), (SECOND, second["text"])]


def test_memory_survives_a_restart_of_the_agents_units(fleet: Fleet) -> None:
    before = shown_turns(fleet)
    fleet.ssh(WORKER, f"systemctl restart {GATEWAY} {RUNTIME}")
    wait_for(lambda: healthy(fleet), 120, "the worker to be healthy again")
    assert shown_turns(fleet) == before
    listed = fleet.run("memory", "list", WORKER)
    assert listed.returncode == 0, listed.stderr
    assert f'{ASKER:<12} "{CONVERSATION}"  2 turn(s)' in listed.stdout, listed.stdout
    owner = fleet.ssh(WORKER, f"stat -c '%U %a' /var/lib/fleet/{WORKER}/memory.db")
    assert owner.split()[0] == WORKER, owner


def test_memory_survives_a_deploy_and_a_rollback(fleet: Fleet) -> None:
    before = shown_turns(fleet)
    first = fleet.ssh(WORKER, "readlink /opt/fleet/current").strip().rsplit("/", 1)[-1]
    git = ["git", "-C", str(fleet.clone), "-c", "user.name=test", "-c",
           "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "next release"], check=True)
    done = fleet.run("deploy", "--limit", WORKER)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fleet.record(done.stdout)["release"] != first
    assert shown_turns(fleet) == before
    back = fleet.run("rollback", WORKER)
    assert back.returncode == 0, back.stdout + back.stderr
    assert fleet.record(back.stdout)["hosts"][WORKER]["release"] == first
    wait_for(lambda: healthy(fleet), 120, "the worker to be healthy after the rollback")
    assert shown_turns(fleet) == before
    third = ask(fleet, THIRD, CONVERSATION)  # the rolled-back release reads the same memory
    soul = fleet.ssh(WORKER, f"cat /etc/fleet/{WORKER}/soul.md")
    earlier = [message for t in before for message in (("user", t["prompt"]),
                                                        ("assistant", t["answer"]))]
    assert third["prompt_tokens"] == token_count(fleet.registry.parent, chatml(
        [("system", soul), *earlier, ("user", THIRD)]))
    assert len(shown_turns(fleet)) == 3
