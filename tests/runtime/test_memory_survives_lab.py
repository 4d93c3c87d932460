"""Conversation memory outlives what the fleet does to an agent, on real lab nodes: a restart of
its units, a deploy of a new release and ``fleet rollback``. The worker thinks with a scripted
provider on the lab's bridge (OpenAI's wire format), so the test reads exactly what reached the
model, and needs no model server. One lab, tests in file order."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bus.client import BusClient
from fleet import lab
from fleet.core.registry import load_registry
from tests.deploy.conftest import SECRETS, Fleet, make_fleet
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root
from tests.runtime.conftest import MockProvider
from tests.runtime.test_runtime_lab import ASKER, KEYS, RUNTIME, WORKER
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
GATEWAY = f"fleet-agent-{WORKER}.service"
CONVERSATION = "lab memory 2"


class Thinking:
    """The lab fleet, the registry whose worker thinks with ``provider``, the secrets file
    holding the provider's key."""

    def __init__(self, fleet: Fleet, registry: Path, provider: MockProvider,
                 env: dict[str, str]) -> None:
        self.fleet, self.registry, self.provider, self.env = fleet, registry, provider, env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.fleet.run(*args, registry=self.registry, extra_env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def ask(self, prompt: str, answer: str) -> dict[str, Any]:
        """Ask the worker ``prompt`` in the conversation (the model answers ``answer``)."""
        self.provider.reply = answer
        with BusClient.for_agent(load_registry(self.registry), ASKER, KEYS, timeout=30) as ezra:
            found: dict[str, Any] = ezra.request(WORKER, {"prompt": prompt,
                                                          "conversation": CONVERSATION},
                                                 timeout=120)["payload"]
        assert found.get("text") == answer, found
        return found

    def turns(self) -> list[tuple[str, str]]:
        """The conversation's turns as ``fleet memory show --json`` lists them."""
        done = self.run("memory", "show", WORKER, CONVERSATION, "--peer", ASKER, "--json")
        return [(turn["prompt"], turn["answer"]) for turn in json.loads(done.stdout)]

    def healthy(self) -> bool:
        url = load_registry(self.registry).get(WORKER).health_endpoint
        try:
            with requests.get(url, timeout=10) as answer:
                return answer.status_code == 200 and answer.json()["status"] == "ok"
        except (requests.RequestException, ValueError, KeyError):
            return False


@pytest.fixture(scope="module")
def thinking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Thinking]:
    """A lab of the example registry, deployed, its worker thinking with a scripted
    provider on the lab's bridge."""
    skip_unless_root()
    claimed = claim_test_lab("memory")
    try:
        lab.down(claimed.lab)
        try:
            path = lab.up(load_registry(EXAMPLE_REGISTRY), lab=claimed.lab)
            base = tmp_path_factory.mktemp("memory-survives")
            fleet = make_fleet(path, base)
            data = yaml.safe_load(path.read_text())
            controller = data["wizards"][WORKER]["host"].rsplit(".", 1)[0] + ".1"
            provider = MockProvider(host=controller)
            try:
                data["wizards"][WORKER]["provider"] = {"base_url": provider.url,
                                                       "api_key": "MOCK_API_KEY"}
                registry = base / "registry.yaml"
                shutil.copytree(path.parent / "souls", base / "souls")
                registry.write_text(yaml.safe_dump(data, sort_keys=False))
                secrets = json.loads(json.dumps(SECRETS))
                secrets["agents"][WORKER]["MOCK_API_KEY"] = provider.key
                (base / "thinking-secrets.yaml").write_text(json.dumps(secrets))
                (base / "thinking-secrets.yaml").chmod(0o600)
                found = Thinking(fleet, registry, provider,
                                 {"FLEET_SECRETS": str(base / "thinking-secrets.yaml")})
                found.run("deploy")
                yield found
            finally:
                provider.close()
        finally:
            lab.down(claimed.lab)
    finally:
        claimed.release()


def sent_with(provider: MockProvider, prompt: str) -> list[dict[str, Any]]:
    """The messages sent with ``prompt``, after the soul (the last such call)."""
    found = [body["messages"] for body in provider.requests
             if body["messages"][-1] == {"role": "user", "content": prompt}]
    assert found, f"{prompt!r} never reached the model"
    return list(found[-1][1:])


def history(turns: list[tuple[str, str]], prompt: str) -> list[dict[str, Any]]:
    return [*[message for asked, answered in turns
              for message in ({"role": "user", "content": asked},
                              {"role": "assistant", "content": answered})],
            {"role": "user", "content": prompt}]


def test_a_conversation_on_a_lab_node_sends_its_earlier_turns(thinking: Thinking) -> None:
    thinking.ask("My favourite colour is green.", "Noted: green.")
    thinking.ask("What is my favourite colour?", "Green.")
    turns = [("My favourite colour is green.", "Noted: green."),
             ("What is my favourite colour?", "Green.")]
    assert sent_with(thinking.provider, "What is my favourite colour?") == history(
        turns[:1], "What is my favourite colour?")
    assert thinking.turns() == turns
    owner = thinking.fleet.ssh(WORKER, f"stat -c '%U' /var/lib/fleet/{WORKER}/memory.db")
    assert owner.strip() == WORKER


def test_memory_survives_a_restart_of_the_agents_units(thinking: Thinking) -> None:
    before = thinking.turns()
    thinking.fleet.ssh(WORKER, f"systemctl restart {GATEWAY} {RUNTIME}")
    wait_for(thinking.healthy, 120, "the worker to be healthy again")
    assert thinking.turns() == before
    thinking.ask("And after a restart?", "Still green.")
    assert sent_with(thinking.provider, "And after a restart?") == history(
        before, "And after a restart?")


def test_memory_survives_a_deploy_and_a_rollback(thinking: Thinking) -> None:
    fleet = thinking.fleet
    before = thinking.turns()
    assert len(before) == 3
    first = fleet.ssh(WORKER, "readlink /opt/fleet/current").strip().rsplit("/", 1)[-1]
    git = ["git", "-C", str(fleet.clone), "-c", "user.name=test", "-c",
           "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "next release"], check=True)
    done = thinking.run("deploy", "--limit", WORKER)
    assert fleet.record(done.stdout)["release"] != first
    assert thinking.turns() == before
    back = thinking.run("rollback", WORKER)
    assert fleet.record(back.stdout)["hosts"][WORKER]["release"] == first
    wait_for(thinking.healthy, 120, "the worker to be healthy after the rollback")
    assert thinking.turns() == before
    thinking.ask("And after a rollback?", "Green, as before.")
    assert sent_with(thinking.provider, "And after a rollback?") == history(
        before, "And after a rollback?")
    listed = thinking.run("memory", "list", WORKER)
    assert f'{ASKER:<12} "{CONVERSATION}"  4 turn(s)' in listed.stdout, listed.stdout


def inbox_ids(thinking: Thinking) -> set[str]:
    """The ids of the messages in the worker's inbox, read through its gateway."""
    done = thinking.run("bus", "tail", WORKER, "--json")
    return {json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()}


def test_a_restore_brings_back_memory_and_inbox_as_they_were(thinking: Thinking) -> None:
    """``fleet state restore`` of a running runtime: a turn and a message that came after the
    snapshot are gone, the runtime answers again and the model sees the restored history."""
    before, messages = thinking.turns(), inbox_ids(thinking)
    taken = thinking.run("state", "backup", WORKER, "--to",
                         str(thinking.fleet.records / "memory-backups"))
    snapshot = next(line.split()[0] for line in thinking.run(
        "state", "list", WORKER).stdout.splitlines() if line[:1].isdigit())
    assert snapshot in taken.stdout, taken.stdout
    thinking.ask("Forget green: it is red now.", "Noted: red.")
    assert len(thinking.turns()) == len(before) + 1 and inbox_ids(thinking) > messages
    done = thinking.run("state", "restore", WORKER, "--snapshot", snapshot)
    assert f"{WORKER}: state restored from snapshot {snapshot}; healthy" in done.stdout
    assert thinking.turns() == before
    assert inbox_ids(thinking) == messages
    thinking.ask("What is my favourite colour now?", "Green.")
    assert sent_with(thinking.provider, "What is my favourite colour now?") == history(
        before, "What is my favourite colour now?")
