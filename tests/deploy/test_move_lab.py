"""``fleet move`` on the nspawn lab (issue 22): 3 agents plus a spare node; bezalel moves to
the spare while the orchestrator sends it 2,000 messages at a steady rate. All arrive once,
its memory and bus key come along, ``fleet status`` is all ok, and the registry file changes
in bezalel's host only (and its ``health_endpoint``, which spells the host out in the lab
registry).

One lab of 4 nodes for the module (``worker-04`` has no agent: it is the spare). The
senders' retry ceiling is shortened by configuration (``FLEET_BUS_RETRY_MAX``, through the
secrets every agent's environment gets), as in ``tests/bus/test_loss.py``: peers still learn
the new address only from the redeployed registry copy.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shlex
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bus.client import BusClient
from bus.errors import BusError
from bus.keys import OPERATOR, PRIVATE_KEY_ENV, public_keys, signing_key
from fleet.core.envfile import parse_env_entries
from fleet.core.registry import load_registry
from tests.deploy.conftest import SECRETS, Fleet, own_lab
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT = "bezalel"
SENDER = "ezra-primary"
SPARE = "worker-04"
COUNT = 2_000
RATE = 50.0  # messages a second
STATE = f"/var/lib/fleet/{AGENT}"
SITE = "/opt/fleet/current/site"
MEMORY = ("from fleet.node.runtime import memory; "
          "from fleet.core.runtime_config import MemorySettings; "
          "[memory.store_turn('{state}', 'ezra-primary', 'plans', f'r{{n}}', f'question {{n}}', "
          "{{'text': f'answer {{n}}'}}, MemorySettings()) for n in range(5)]")
QUERY = ("import sqlite3, sys, json; db = sqlite3.connect(sys.argv[1]); "
         "print(json.dumps(db.execute(sys.argv[2]).fetchall()))")


@pytest.fixture(scope="module")
def lab_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A lab of 4 nodes whose registry lists 3 agents (the 4th node is the spare), deployed,
    with the senders' retries capped at 2 s."""
    with own_lab("move", tmp_path_factory.mktemp("move"), nodes=4) as fleet:
        text = fleet.registry.read_text()
        registry = fleet.registry.parent / "registry-move.yaml"
        registry.write_text(text[:text.index(f"  {SPARE}:\n")])
        secrets = Path(fleet.env["FLEET_SECRETS"])
        secrets.write_text(json.dumps({**SECRETS, "fleet": {
            **SECRETS["fleet"], "FLEET_BUS_RETRY_MAX": "2.000000"}}))
        moved = dataclasses.replace(fleet, registry=registry,
                                    env={**fleet.env, "FLEET_REGISTRY": str(registry)})
        done = moved.run("deploy")
        assert done.returncode == 0, done.stdout + done.stderr
        yield moved


def node_query(fleet: Fleet, node: str, database: str, sql: str) -> Any:
    """Rows of ``sql`` in ``database`` on lab node ``node``."""
    return json.loads(fleet.ssh(node, f"python3 -c {shlex.quote(QUERY)} {shlex.quote(database)} "
                                      f"{shlex.quote(sql)}"))


def bus_key(fleet: Fleet, node: str) -> dict[str, str]:
    """The bus public keys of bezalel's env file on ``node``."""
    env = {entry.name: entry.value
           for entry in parse_env_entries(fleet.ssh(node, f"cat /etc/fleet/{AGENT}/env"))}
    return public_keys(AGENT, env[PRIVATE_KEY_ENV])


def send_steadily(url: str, ids: list[str], sent: list[tuple[str, float]],
                  refused: list[str]) -> None:
    """Queue one alert to bezalel per id in the orchestrator's outbox, the n-th at n/RATE s
    (each noted with the time it was queued); a refused send (the gateway restarting) is tried
    again with the same id."""
    key = signing_key(OPERATOR, SECRETS["identities"][OPERATOR][PRIVATE_KEY_ENV])
    client = BusClient(url, SENDER, key, timeout=5)
    start = time.monotonic()
    try:
        for number, message_id in enumerate(ids):
            time.sleep(max(0.0, start + number / RATE - time.monotonic()))
            give_up = time.monotonic() + 120
            while True:
                try:
                    client.send(AGENT, "alert", {"n": number}, id=message_id)
                    break
                except BusError:
                    refused.append(message_id)
                    assert time.monotonic() < give_up, f"{SENDER} refused {message_id} for 120 s"
                    time.sleep(0.1)
            sent.append((message_id, time.time()))
    finally:
        client.session.close()


def test_move_a_worker_to_the_spare_while_it_receives(lab_fleet: Fleet) -> None:
    fleet = lab_fleet
    registry = load_registry(fleet.registry)
    old, spare = registry.get(AGENT).host, load_registry(
        fleet.registry.parent / "registry.yaml").get(SPARE).host
    fleet.ssh(AGENT, f"runuser -u {AGENT} -- env PYTHONPATH={SITE} python3 -c "
                     f"{shlex.quote(MEMORY.format(state=STATE))}")
    turns = "SELECT seq, peer, conversation, request_id, prompt, answer FROM turns"
    memory_before = node_query(fleet, AGENT, f"{STATE}/memory.db", turns)
    assert len(memory_before) == 5
    key_before = bus_key(fleet, AGENT)
    text_before = fleet.registry.read_text()

    ids = [f"move-{n}" for n in range(COUNT)]
    sent: list[tuple[str, float]] = []
    refused: list[str] = []
    sender = threading.Thread(target=send_steadily, daemon=True, args=(
        registry.get(SENDER).gateway_url, ids, sent, refused))
    sender.start()
    wait_for(lambda: len(sent) >= COUNT // 10, 60, "the first messages to be queued")
    moved = fleet.run("move", AGENT, "--to", spare, "--yes")
    sender.join(300)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert sorted(message for message, _ in sent) == sorted(ids)
    record_line = moved.stdout.strip().splitlines()[-1]
    record = json.loads(Path(record_line.rsplit("(record: ", 1)[1].rstrip(")")).read_text())
    assert (record["kind"], record["status"], record["move"]["to"]) == ("move", "ok", spare)
    steps = {step["step"].split(" ")[0]: datetime.fromisoformat(step["at"]).timestamp()
             for step in record["move"]["steps"]}
    while_away = [message for message, at in sent if steps["stopped"] <= at <= steps[
        "registry"]]  # queued while bezalel ran nowhere, before the registry changed
    assert len(while_away) >= 100, (steps, len(while_away))

    text_after = fleet.registry.read_text()  # one edit: bezalel's host (spelled twice)
    changed = [line for line in difflib.ndiff(text_before.splitlines(), text_after.splitlines())
               if line[:1] in "+-"]
    assert changed == [f"-     host: {old}", f"+     host: {spare}",
                       f"-     health_endpoint: http://{old}:8646/health",
                       f"+     health_endpoint: http://{spare}:8646/health"], changed
    assert load_registry(fleet.registry).get(AGENT).line == registry.get(AGENT).line
    assert f"-    host: {old}\n+    host: {spare}" in moved.stdout  # shown as a diff

    inbox = f"{STATE}/bus.sqlite3"
    count = f"SELECT COUNT(*) FROM inbox WHERE sender = '{SENDER}' AND id LIKE 'move-%'"
    wait_for(lambda: node_query(fleet, SPARE, inbox, count) == [[COUNT]], 180,
             lambda: f"{COUNT} messages in {AGENT}'s inbox on {SPARE} (now "
                     f"{node_query(fleet, SPARE, inbox, count)})", every=1)
    got = node_query(fleet, SPARE, inbox, f"SELECT id FROM inbox WHERE sender = '{SENDER}' "
                                          "AND id LIKE 'move-%'")
    assert sorted(row[0] for row in got) == sorted(ids)  # 0 lost, 0 duplicated
    store = f"/var/lib/fleet/{SENDER}/bus.sqlite3"
    wait_for(lambda: node_query(fleet, SENDER, store, "SELECT COUNT(*) FROM outbox") == [[0]],
             60, f"{SENDER}'s outbox to drain")
    assert node_query(fleet, SENDER, store, "SELECT COUNT(*) FROM dead_letters") == [[0]]

    assert node_query(fleet, SPARE, f"{STATE}/memory.db", turns) == memory_before
    assert bus_key(fleet, SPARE) == key_before  # the same identity
    status = fleet.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    row = next(line.split() for line in status.stdout.splitlines() if line.startswith(AGENT))
    assert (row[2], row[3:5], row[-1]) == (spare, ["ok", "ok"], "ok"), status.stdout

    leftover = fleet.ssh(AGENT, f"ls /etc/systemd/system/ /etc/fleet/; ls -d {STATE}")
    assert f"fleet-agent-{AGENT}.service" not in leftover  # the old service is gone
    assert f"\n{AGENT}\n" not in f"\n{leftover}"  # and its secrets: /etc/fleet/{AGENT}
    assert STATE in leftover  # its state stays until --purge
