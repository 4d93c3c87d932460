"""Agents that think, on the lab with the real model server (the lab model, SmolLM2 135M
Instruct by default, through llama.cpp's OpenAI-compatible server on the lab bridge). The
tests share one lab and run in file order: a deploy leaves agents whose runtimes answer
requests with model-written text; a runtime killed -9 mid-request answers once after its
restart; with the model server stopped requests wait and are answered after it returns; a
release whose runtime cannot reach its provider fails verify and is rolled back; the soul
reaches the model, and a new soul changes the answers.

The model is very small: the tests check that answers came from it over the wire (tokens,
timing, the right correlation id, the prompt's token count), and count what it says rather
than expect each answer to follow the soul."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab import model
from fleet.lab.network import MAX_INDEX, controller_ip, read_index
from tests.deploy.conftest import SECRETS, Fleet, make_fleet
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root
from tests.runtime.test_runtime import settled_bus
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
KEYS = {name: env[PRIVATE_KEY_ENV] for name, env in SECRETS["agents"].items()}
ASKER, WORKER = "ezra-primary", "bezalel"
RUNTIME = f"fleet-runtime-{WORKER}.service"
MAX_TOKENS = 64  # per answer: a few seconds here, minutes when the machine is very busy
NEW_SOUL = "You only answer in French.\n"
"""The worker's new soul: an instruction the 135M model follows in some answers, not all
(measured with the worker's own soul before it: 0 of 10 answers in French; prepended to
that soul the instruction is drowned out: 0 of 10 too)."""
PROMPTS = ["What colour is the sky on a clear day?", "Name three fruits.",
           "What is the capital of Italy?", "Describe a cat in one sentence.", "Say hello.",
           "Say goodbye.", "What is rain?", "Suggest a name for a dog.", "Introduce yourself.",
           "Thank the user for their help."]
FRENCH_WORDS = frozenset({"le", "la", "les", "un", "une", "des", "est", "et", "je", "tu", "vous",
                          "nous", "il", "elle", "ce", "cette", "qui", "que", "pour", "dans",
                          "avec", "sur", "pas", "sont", "ou", "du", "au", "aux", "mais", "très",
                          "bonjour", "en"})
ENGLISH_WORDS = frozenset({"the", "is", "are", "and", "i", "you", "we", "it", "this", "that",
                           "which", "for", "in", "with", "not", "of", "to", "or", "but", "very",
                           "hello"})


@pytest.fixture(scope="module")
def model_lab() -> Iterator[Path]:
    """A lab of the example registry with the model server; every agent thinks with it."""
    skip_unless_root()
    claimed = claim_test_lab("think")
    try:
        lab.down(claimed.lab)
        try:
            registry = load_registry(EXAMPLE_REGISTRY)
            short = {name: replace(agent, config={"max_tokens": MAX_TOKENS, "temperature": 0})
                     for name, agent in registry.agents.items()}
            yield lab.up(replace(registry, agents=short), lab=claimed.lab, with_model=True)
        finally:
            lab.down(claimed.lab)
    finally:
        claimed.release()


@pytest.fixture(scope="module")
def fleet(model_lab: Path, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(model_lab, tmp_path_factory.mktemp("think"))


def asker(fleet: Fleet) -> BusClient:
    return BusClient.for_agent(load_registry(fleet.registry), ASKER, KEYS, timeout=30)


def responses(client: BusClient, correlation: str) -> list[dict[str, Any]]:
    return list(client.messages(type="response", correlation_id=correlation)["messages"])


def worker_client(fleet: Fleet) -> BusClient:
    """A client of the worker's own gateway, signed as the worker."""
    return BusClient.for_agent(load_registry(fleet.registry), WORKER, KEYS, timeout=30)


def failed_try(fleet: Fleet, request_id: str) -> dict[str, Any] | None:
    """The runtime's last model round trip while it holds request ``request_id`` and waits
    for the provider after that round trip failed; None otherwise."""
    state = runtime_state(fleet)
    last = state.get("last_round_trip") or {}
    if (state.get("current"), state.get("state"), last.get("ok")) == (
            request_id, "waiting_provider", False):
        return dict(last)
    return None


def runtime_state(fleet: Fleet) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fleet.ssh(WORKER, f"cat /var/lib/fleet/{WORKER}/"
                                                        "runtime.json"))
    return data


def test_deploy_leaves_agents_that_answer_with_the_model(fleet: Fleet) -> None:
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    registry = load_registry(fleet.registry)
    for agent in registry:
        with requests.get(f"{agent.health_endpoint}?roundtrip=1", timeout=30) as answer:
            health = answer.json()
        assert answer.status_code == 200, health
        assert health["runtime"]["state"] == "ready", health
        assert health["runtime"]["live_round_trip"]["tokens"] > 0, health
    thinking = fleet.run("status", "--think", "--json")
    assert thinking.returncode == 0, thinking.stdout + thinking.stderr
    started = time.monotonic()
    with asker(fleet) as ezra:
        answer = ezra.request(WORKER, {"prompt": "Write one line of Python."}, timeout=180,
                              correlation_id="lab-corr-1")
    took = time.monotonic() - started
    assert answer["correlation_id"] == "lab-corr-1"
    assert answer["from"] == WORKER
    payload = answer["payload"]
    assert "error" not in payload, payload
    assert payload["tokens"] > 0 and payload["text"].strip(), payload
    assert 0 < payload["latency_ms"] < took * 1000


def test_the_model_server_listens_on_the_lab_bridge_only(fleet: Fleet) -> None:
    """Who may use the lab model (README, ``fleet lab up --model``): the lab's nodes, and processes
    on the controller (which owns the bridge address); no other machine, and no node of
    another lab: it listens on the bridge address alone, and a node routes only its bridge."""
    index = read_index(fleet.registry.parent)
    assert index is not None
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{model.MODEL_PORT}"],
                               capture_output=True, text=True, check=True).stdout
    addresses = [line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()]
    assert controller_ip(index) in addresses, addresses
    labs = {controller_ip(other) for other in range(MAX_INDEX + 1)}
    assert set(addresses) <= labs, addresses  # each lab's server on its own bridge, none on
    # every address (a lab of another test, up meanwhile, has its own server)
    other_lab = controller_ip(index + 1 if index < MAX_INDEX else index - 1)
    route = fleet.ssh(WORKER, f"ip -4 route; ip route get {other_lab} 2>&1 || true")
    assert route.splitlines()[0].startswith(f"{controller_ip(index).rsplit('.', 1)[0]}.0/24 ")
    assert "default" not in route and "Network is unreachable" in route, route


def test_runtime_killed_mid_request_answers_exactly_once(fleet: Fleet) -> None:
    correlation = f"lab-kill-{uuid.uuid4()}"
    with asker(fleet) as ezra:
        sent = ezra.send(WORKER, "request", {"prompt": "Tell a long story about a robot."},
                         correlation_id=correlation, reply_to=ASKER)
        wait_for(lambda: runtime_state(fleet).get("current") == sent["id"], 120,
                 "the runtime to take the request")
        pid_before = fleet.ssh(WORKER, f"systemctl show -p MainPID --value {RUNTIME}").strip()
        fleet.ssh(WORKER, f"systemctl kill -s KILL {RUNTIME}")
        wait_for(lambda: responses(ezra, correlation), 400, "the answer after the restart",
                 every=0.2)
        with worker_client(fleet) as worker:  # nothing in hand, nothing unacked, all delivered
            wait_for(lambda: runtime_state(fleet).get("current") is None
                     and settled_bus(worker), 120, "the worker to settle", every=0.5)
        found = responses(ezra, correlation)
    pid_after = fleet.ssh(WORKER, f"systemctl show -p MainPID --value {RUNTIME}").strip()
    assert pid_after != pid_before  # systemd restarted it
    assert len(found) == 1, found
    assert found[0]["payload"]["tokens"] > 0, found


def test_requests_wait_while_the_model_is_down_and_are_answered_after(fleet: Fleet) -> None:
    lab_path = fleet.registry.parent
    index = read_index(lab_path)
    assert index is not None
    model.stop(lab_path)
    correlation = f"lab-outage-{uuid.uuid4()}"
    try:
        with asker(fleet) as ezra, worker_client(fleet) as worker:
            sent = ezra.send(WORKER, "request", {"prompt": "Say hello."},
                             correlation_id=correlation, reply_to=ASKER)
            first = wait_for(lambda: failed_try(fleet, sent["id"]), 120,
                             "the runtime to try the stopped model for the request", every=0.2)
            wait_for(lambda: (again := failed_try(fleet, sent["id"])) and again["at"] > first["at"],
                     120, "the runtime to try the model again (it waits, not gives up)", every=0.2)
            held = worker.messages(type="request", unacked=1)["messages"]
            assert sent["id"] in [m["id"] for m in held]  # taken in, not acknowledged
            assert worker.stats()["outbox_depth"] == 0  # no answer queued, not even an error
            assert responses(ezra, correlation) == []
            model.start(lab_path, index)
            answer = wait_for(lambda: responses(ezra, correlation), 300, "the answer",
                              every=0.2)[0]
    finally:
        model.start(lab_path, index)
    assert answer["payload"]["tokens"] > 0, answer


def test_release_whose_runtime_cannot_reach_its_provider_is_rolled_back(fleet: Fleet) -> None:
    before = requests.get(f"http://{load_registry(fleet.registry).get(WORKER).host}:8646"
                          "/health", timeout=10).json()["release"]
    source = fleet.clone / "fleet" / "node" / "runtime" / "service.py"
    text = source.read_text()
    broken_text = text.replace("return Provider(base_url=agent.provider_url,",
                               "return Provider(base_url='http://127.0.0.1:9/v1',")
    assert broken_text != text  # the runtime's provider is made there
    source.write_text(broken_text)
    git = ["git", "-C", str(fleet.clone), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-qam", "runtime calls nothing"], check=True)
    try:
        broken = fleet.run("deploy", "--limit", WORKER)
    finally:
        subprocess.run([*git, "reset", "-q", "--hard", "HEAD~1"], check=True)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    entry = fleet.record(broken.stdout)["hosts"][WORKER]
    assert entry["status"] == "rolled_back", entry
    problems = " ".join(entry["verify"]["problems"])
    assert "runtime is waiting_provider" in problems and "127.0.0.1:9" in problems, problems
    health = requests.get(f"http://{load_registry(fleet.registry).get(WORKER).host}:8646"
                          "/health?roundtrip=1", timeout=30).json()
    assert health["release"] == before and health["status"] == "ok", health


def test_fleet_ask_routes_by_capability_and_prints_the_model_answer(fleet: Fleet) -> None:
    done = fleet.run("ask", "--capability", "code", "--json", "Write one line of Python.")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["agent"] == WORKER and answer["asked"] == [WORKER]  # the one coder
    assert answer["payload"]["tokens"] > 0 and answer["payload"]["text"].strip(), answer


def chatml(soul: str, prompt: str) -> str:
    """What the model reads for ``prompt`` under ``soul``: the ChatML rendering of the system
    and user messages (the GGUF's own chat template), up to the assistant's turn."""
    return (f"<|im_start|>system\n{soul}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")


def token_count(lab_path: Path, text: str) -> int:
    """How many tokens the lab's model server makes of ``text``."""
    index = read_index(lab_path)
    assert index is not None
    with requests.post(f"http://{controller_ip(index)}:{model.MODEL_PORT}/extras/tokenize/count",
                       json={"input": text}, timeout=60) as answer:
        answer.raise_for_status()
        return int(answer.json()["count"])


def looks_french(text: str) -> bool:
    """More French function words in ``text`` than English ones."""
    words = re.findall(r"[a-zàâçéèêëîïôûùüÿœ]+", text.lower())
    return sum(w in FRENCH_WORDS for w in words) > sum(w in ENGLISH_WORDS for w in words)


def answers(registry: Path) -> list[dict[str, Any]]:
    """The worker's answers to :data:`PROMPTS`, asked one at a time."""
    with BusClient.for_agent(load_registry(registry), ASKER, KEYS, timeout=30) as ezra:
        found = [ezra.request(WORKER, {"prompt": prompt}, timeout=300)["payload"]
                 for prompt in PROMPTS]
    for payload in found:
        assert "error" not in payload and payload["tokens"] > 0, payload
    return found


def test_the_soul_reaches_the_model_and_a_new_soul_changes_the_answers(
        fleet: Fleet, tmp_path: Path) -> None:
    lab_path = fleet.registry.parent
    if model.served_by(lab_path) is not model.SMOLLM2:
        pytest.skip("the lab serves a model whose chat format drops the system message")
    soul = fleet.ssh(WORKER, f"cat /etc/fleet/{WORKER}/soul.md")
    before = answers(fleet.registry)
    # the soul is in the model's prompt: the prompt it read is exactly soul + question
    assert [a["prompt_tokens"] for a in before] == [
        token_count(lab_path, chatml(soul, prompt)) for prompt in PROMPTS]
    shutil.copytree(lab_path / "souls", tmp_path / "souls")
    (tmp_path / "souls" / f"{WORKER}.md").write_text(NEW_SOUL)
    edited = tmp_path / "registry.yaml"
    shutil.copy(fleet.registry, edited)
    try:
        done = fleet.run("deploy", "--limit", WORKER, registry=edited)
        assert done.returncode == 0, done.stdout + done.stderr
        assert fleet.ssh(WORKER, f"cat /etc/fleet/{WORKER}/soul.md") == NEW_SOUL
        after = answers(edited)
    finally:
        back = fleet.run("deploy", "--limit", WORKER)
    assert back.returncode == 0, back.stdout + back.stderr
    assert fleet.ssh(WORKER, f"cat /etc/fleet/{WORKER}/soul.md") == soul
    assert [a["prompt_tokens"] for a in after] == [
        token_count(lab_path, chatml(NEW_SOUL, prompt)) for prompt in PROMPTS]
    changed = sum(a["text"] != b["text"] for a, b in zip(after, before, strict=True))
    french_before = sum(looks_french(a["text"]) for a in before)
    french_after = sum(looks_french(a["text"]) for a in after)
    print(f"\nprompt_tokens = the server's count of soul + prompt for all {len(PROMPTS)} "
          f"prompts, both souls; answers changed by the new soul: {changed}/{len(PROMPTS)}; "
          f"French-looking: {french_before}/{len(PROMPTS)} with the worker's soul, "
          f"{french_after}/{len(PROMPTS)} with {NEW_SOUL.strip()!r}")
    assert changed >= len(PROMPTS) // 2
    assert french_after > french_before


CONVERSATION = "lab memory 1"
FIRST = "My favourite colour is green. Say OK."
SECOND = "What is my favourite colour?"


def ask_payload(fleet: Fleet, prompt: str, conversation: str | None = None) -> dict[str, Any]:
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


def chat_turns(messages: list[tuple[str, str]]) -> str:
    """The ChatML rendering of ``messages`` (role, content) up to the assistant's turn."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n"
                   for role, content in messages) + "<|im_start|>assistant\n"


def test_the_second_question_of_a_conversation_reaches_the_model_after_the_first_turn(
        fleet: Fleet) -> None:
    """Memory with the real model: the prompt the server read for the second question is
    exactly soul, first turn, question (its own token count), more than the same question
    asked one-off by the first turn's tokens; ``fleet memory show`` lists both turns. (That
    memory outlives restarts, deploys and rollbacks: tests/runtime/test_memory_survives_lab.py,
    with a scripted provider.)"""
    lab_path = fleet.registry.parent
    if model.served_by(lab_path) is not model.SMOLLM2:
        pytest.skip("the lab serves a model whose chat format drops the system message")
    soul = fleet.ssh(WORKER, f"cat /etc/fleet/{WORKER}/soul.md")
    alone = ask_payload(fleet, SECOND)
    first = ask_payload(fleet, FIRST, CONVERSATION)
    second = ask_payload(fleet, SECOND, CONVERSATION)
    turn = [("user", FIRST), ("assistant", first["text"])]
    first_turn = token_count(lab_path, chat_turns(turn)) - token_count(lab_path, chat_turns([]))
    print(f"\nprompt_tokens: {alone['prompt_tokens']} one-off, {second['prompt_tokens']} in "
          f"the conversation (the first turn: {first_turn} tokens); answers: "
          f"{first['text']!r}, then {second['text']!r}")
    assert second["prompt_tokens"] >= alone["prompt_tokens"] + first_turn
    assert second["prompt_tokens"] == token_count(lab_path, chat_turns(
        [("system", soul), *turn, ("user", SECOND)]))
    shown = fleet.run("memory", "show", WORKER, CONVERSATION, "--peer", ASKER, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert [(t["prompt"], t["answer"]) for t in json.loads(shown.stdout)] == [
        (FIRST, first["text"]), (SECOND, second["text"])]


def operator_runtime_registry(fleet: Fleet, tmp_path: Path, script: str, shipped: str,
                              *args: str) -> Path:
    """A copy of the lab registry in ``tmp_path`` (souls beside it) whose worker runs this
    folder's ``script`` as its operator runtime: shipped as ``shipped``, run as
    ``python3 shipped args``."""
    data = yaml.safe_load(fleet.registry.read_text())
    data["wizards"][WORKER]["runtime"] = {"command": ["python3", shipped, *args],
                                          "ship": [shipped]}
    shutil.copytree(fleet.registry.parent / "souls", tmp_path / "souls")
    shutil.copy(Path(__file__).parent / script, tmp_path / shipped)
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    return edited


def test_operator_runtime_command_is_deployed_and_verified_the_same_way(
        fleet: Fleet, tmp_path: Path) -> None:
    edited = operator_runtime_registry(fleet, tmp_path, "operator_agent.py", "agent.py")
    done = fleet.run("deploy", "--limit", WORKER, registry=edited)
    assert done.returncode == 0, done.stdout + done.stderr + fleet.ssh(
        WORKER, f"journalctl -u {RUNTIME} -n 40 --no-pager")
    assert fleet.record(done.stdout)["hosts"][WORKER]["status"] == "ok"
    unit = fleet.ssh(WORKER, f"systemctl show -p ExecStart -p User -p NoNewPrivileges "
                             f"-p ProtectSystem {RUNTIME}")
    assert "argv[]=python3 agent.py" in unit and f"User={WORKER}" in unit, unit
    assert "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit, unit
    health = requests.get(f"{load_registry(edited).get(WORKER).health_endpoint}?roundtrip=1",
                          timeout=30).json()
    assert health["runtime"]["kind"] == "command" and health["status"] == "ok", health
    with BusClient.for_agent(load_registry(edited), ASKER, KEYS, timeout=30) as ezra:
        answer = ezra.request(WORKER, {"prompt": "Say hi."}, timeout=180)
    assert answer["payload"]["runtime"] == "operator-agent", answer
    assert answer["payload"]["tokens"] > 0, answer


def test_shipped_runtime_files_go_with_the_release_and_a_rollback_brings_them_back(
        fleet: Fleet, tmp_path: Path) -> None:
    shipped = f"/etc/fleet/{WORKER}/ship/agent.py"
    first = fleet.ssh(WORKER, "readlink /opt/fleet/current").strip().rsplit("/", 1)[-1]
    before = fleet.ssh(WORKER, f"sha256sum < {shipped}")
    edited = operator_runtime_registry(fleet, tmp_path, "operator_agent.py", "agent.py")
    with (tmp_path / "agent.py").open("a") as script:
        script.write("# the second version\n")
    git = ["git", "-C", str(fleet.clone), "-c", "user.name=test", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "next release"], check=True)
    done = fleet.run("deploy", "--limit", WORKER, registry=edited)
    assert done.returncode == 0, done.stdout + done.stderr
    second = fleet.record(done.stdout)["release"]
    assert second != first
    assert fleet.ssh(WORKER, f"tail -n 1 {shipped}") == "# the second version\n"
    assert fleet.ssh(WORKER, f"readlink /etc/fleet/{WORKER}/ship") == \
        f"/opt/fleet/current/ship/{WORKER}\n"
    back = fleet.run("rollback", WORKER, registry=edited)
    assert back.returncode == 0, back.stdout + back.stderr
    assert fleet.record(back.stdout)["hosts"][WORKER]["release"] == first
    assert fleet.ssh(WORKER, f"sha256sum < {shipped}") == before  # the first release's file
    health = requests.get(load_registry(edited).get(WORKER).health_endpoint, timeout=30).json()
    assert (health["status"], health["runtime"]["kind"]) == ("ok", "command"), health


@pytest.mark.parametrize("mode", ["exit", "exit-after-2s", "silent"])
def test_operator_runtime_that_does_not_work_fails_verify_and_is_never_ready(
        fleet: Fleet, tmp_path: Path, mode: str) -> None:
    edited = operator_runtime_registry(fleet, tmp_path, "broken_agent.py", "broken.py", mode)
    done = fleet.run("deploy", "--limit", WORKER, registry=edited)
    assert done.returncode == 1, done.stdout + done.stderr
    entry = fleet.record(done.stdout)["hosts"][WORKER]
    problems = " ".join(entry["verify"]["problems"])
    if mode == "silent":  # none of its own: no file, or the one an earlier runtime left
        assert any(reason in problems for reason in (
            "runtime has written no state file", "runtime is not running",
            "runtime is stopped")), entry
    else:
        assert problems.startswith(RUNTIME), entry  # names the agent's runtime unit
        assert "does not stay up" in problems or "restarted during verify" in problems, entry
    status = fleet.run("status", "--json", registry=edited)
    [found] = [agent for agent in json.loads(status.stdout)["agents"]
               if agent["agent"] == WORKER]
    assert found["healthy"] is False, found
    asked = fleet.run("ask", "--capability", "code", "Say hi.", registry=edited)
    assert asked.returncode != 0  # the one coder is never ready: nothing is routed to it
    assert "no healthy agent with capability 'code'" in asked.stderr, asked.stderr
