"""The test sandbox on a real lab node (the session lab, bezalel deployed): a repository's
test script run through the agent's sandbox socket cannot reach another address, read the
agent's env or policy or another agent's state, write outside its workspace, fork without
bound, grow past its memory or run past its time; each run is stopped and recorded with its
reason, a passing script passes and writes its workspace, a caller that is not the agent is
refused, and the agent stays healthy and takes requests afterwards. A deploy installs the
sandbox and a second one plans nothing; a deploy after the policy was changed on the node
puts it back."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.client import BusClient
from bus.keys import OPERATOR, PRIVATE_KEY_ENV, signing_key
from fleet.control import render
from fleet.control.status import probe_health
from fleet.core.registry import load_registry
from fleet.core.sandbox_policy import policy_from_dict
from tests.deploy.conftest import SECRETS, Fleet, make_fleet
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT, OTHER = "bezalel", "ezra-primary"
STATE = f"/var/lib/fleet/{AGENT}"
POLICY_PATH = f"/etc/fleet/{AGENT}/sandbox.json"
RECORDS = f"{STATE}/sandbox-runs.jsonl"
LIMITS = {"runtime_max_s": 4, "memory_max_mib": 64, "tasks_max": 16, "output_max_kib": 4}
SITE = "/opt/fleet/current/site"
CLIENT = ("import json, sys\nfrom fleet.node.work.sandbox import SandboxError, run_tests\n"
          "try:\n    print(json.dumps(run_tests(sys.argv[1], agent=sys.argv[2]).to_dict()))\n"
          "except SandboxError as exc:\n    print(json.dumps({'error': str(exc)}))\n")
SCRIPTS = {  # workspace: the run-tests.sh it holds
    "w-00000000a001": "echo ok > result.txt\necho PASSED\n",
    "w-00000000a002": "python3 connect.py {other} 22 && python3 connect.py {controller} 22\n",
    "w-00000000a003": "cat /etc/fleet/{agent}/env; cat /etc/fleet/{agent}/sandbox.json; "
                      "ls /etc/fleet/{agent} || exit 1\n",
    "w-00000000a004": "cat /var/lib/fleet/other-agent/notes.txt || exit 1\n",
    "w-00000000a005": "echo x > /var/lib/fleet/{agent}/escaped; echo x > /var/tmp/escaped; "
                      "echo x > /opt/escaped; echo x > /tmp/private; exit 1\n",
    "w-00000000a006": "bomb() {{ bomb | bomb & }}; bomb; sleep 30\n",
    "w-00000000a007": "exec python3 -c 'import time\nx = []\nwhile True:\n"
                      "    x.append(b\"x\" * (4 << 20)); time.sleep(0.02)'\n",
    "w-00000000a008": "echo started; sleep 60\n",
}
CONNECT = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], "
           "int(sys.argv[2])), timeout=3)\nexcept OSError as exc:\n    print('BLOCKED', exc)\n"
           "    sys.exit(1)\nprint('CONNECTED', sys.argv[1])\n")


def ssh(fleet: Fleet, command: str, stdin: str = "", timeout: float = 120) -> str:
    """``command`` as root on bezalel's node; its stdout (exit status checked)."""
    done = subprocess.run(["ssh", "-F", str(fleet.registry.parent / "ssh_config"), AGENT,
                           command], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run_as(fleet: Fleet, user: str, workspace: str) -> dict[str, Any]:
    """The client, run as ``user`` on the node, asking for a run in ``work/WORKSPACE``."""
    command = (f"runuser -u {user} -- env PYTHONPATH={SITE} python3 -c {shlex.quote(CLIENT)} "
               f"work/{workspace} {AGENT}")
    answer: dict[str, Any] = json.loads(ssh(fleet, command).strip().splitlines()[-1])
    return answer


@pytest.fixture(scope="module")
def fleet(lab_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """A clean clone of the repo's HEAD wired to the session lab."""
    return make_fleet(lab_registry, tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(scope="module")
def deployed(fleet: Fleet) -> Iterator[Fleet]:
    """bezalel deployed; its workspaces with their scripts; a lab policy with short limits
    (the deploy puts the registry's back at the end)."""
    done = fleet.run("deploy", "--limit", AGENT)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = fleet.run("deploy", "--dry", "--limit", AGENT)  # a second deploy plans nothing
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert fleet.record(plan.stdout)["hosts"][AGENT]["planned"] == []
    assert ssh(fleet, f"systemctl is-active fleet-sandbox-{AGENT}.socket").strip() == "active"
    values = {"agent": AGENT, "other": fleet.ssh(OTHER, "hostname -I").split()[0],
              "controller": fleet.controller()}
    setup = ["mkdir -p /var/lib/fleet/other-agent",
             "echo other > /var/lib/fleet/other-agent/notes.txt",
             "chmod 755 /var/lib/fleet/other-agent; chmod 644 /var/lib/fleet/other-agent/*"]
    for workspace, script in SCRIPTS.items():
        folder = f"{STATE}/work/{workspace}"
        setup += [f"install -d -o {AGENT} -g {AGENT} {STATE}/work {folder}",
                  f"printf %s {shlex.quote(script.format(**values))} > {folder}/run-tests.sh",
                  f"printf %s {shlex.quote(CONNECT)} > {folder}/connect.py",
                  f"chown {AGENT}: {folder}/*"]
    policy = policy_from_dict({"argv": ["sh", "run-tests.sh"], "limits": LIMITS})
    setup.append(f"cat > {POLICY_PATH}.new && mv {POLICY_PATH}.new {POLICY_PATH}")
    ssh(fleet, " && ".join(setup), stdin=render.config_json(policy.to_dict()))
    yield fleet
    ssh(fleet, "rm -rf /var/lib/fleet/other-agent")


def test_each_escape_is_stopped_and_recorded_and_the_agent_stays_healthy(
        deployed: Fleet) -> None:
    fleet = deployed
    other_ip = fleet.ssh(OTHER, "hostname -I").split()[0]
    outside = ssh(fleet, f"runuser -u {AGENT} -- python3 -c {shlex.quote(CONNECT)} "
                         f"{other_ip} 22")
    assert outside.startswith("CONNECTED"), outside  # outside the sandbox it can connect
    results = {workspace: run_as(fleet, AGENT, workspace) for workspace in SCRIPTS}
    status = {workspace: (result.get("status"), result.get("exit_status"))
              for workspace, result in results.items()}
    assert status == {
        "w-00000000a001": ("passed", 0), "w-00000000a002": ("failed", 1),
        "w-00000000a003": ("failed", 1), "w-00000000a004": ("failed", 1),
        "w-00000000a005": ("failed", 1), "w-00000000a006": ("tasks", None),
        "w-00000000a007": ("memory", None), "w-00000000a008": ("timeout", None)}, results
    assert results["w-00000000a001"]["output"] == "PASSED\n"
    assert ssh(fleet, f"stat -c %U {STATE}/work/w-00000000a001/result.txt").strip() == AGENT
    assert "BLOCKED" in results["w-00000000a002"]["output"]
    assert "CONNECTED" not in results["w-00000000a002"]["output"]
    assert results["w-00000000a002"]["network"] == "none"  # the lab has no BPF firewall
    assert results["w-00000000a003"]["output"] == (  # hidden, though the policy is 0644
        f"cat: /etc/fleet/{AGENT}/env: No such file or directory\n"
        f"cat: /etc/fleet/{AGENT}/sandbox.json: No such file or directory\n"
        f"ls: cannot access '/etc/fleet/{AGENT}': No such file or directory\n")
    assert results["w-00000000a004"]["output"] == (  # hidden, though it is world-readable
        "cat: /var/lib/fleet/other-agent/notes.txt: No such file or directory\n")
    leftovers = ssh(fleet, f"ls {STATE}/escaped /var/tmp/escaped /opt/escaped /tmp/private "
                           "2>&1; true")
    assert leftovers.count("No such file or directory") == 4, leftovers
    assert results["w-00000000a008"]["output"] == "started\n"
    assert 4 <= results["w-00000000a008"]["duration_s"] < 4 + 15

    # another user: root (wrong uid) and nobody (no access to the 0600 socket)
    assert run_as(fleet, "root", "w-00000000a001")["error"].startswith(
        "the sandbox refused the run: uid 0 is not bezalel's")
    assert "Permission denied" in run_as(fleet, "nobody", "w-00000000a001")["error"]

    # recorded: the state dir's records (root's, the agent can read them) and the journal
    lines = ssh(fleet, f"runuser -u {AGENT} -- cat {RECORDS}").splitlines()
    recorded = [json.loads(line) for line in lines]
    assert [(line["status"], line["exit_status"]) for line in recorded] == [
        *status.values(), ("refused", None)]
    assert ssh(fleet, f"stat -c '%U %a' {RECORDS}").strip() == "root 644"
    journal = ssh(fleet, "journalctl --no-pager -o cat -u 'fleet-sandbox-bezalel@*'")
    assert journal.count('"status": "tasks"') == 1 and '"status": "refused"' in journal
    assert ssh(fleet, "systemctl list-units --all --no-legend 'fleet-sandbox-bezalel-*' "
                      "| wc -l").strip() == "0"  # no unit lingers

    # the agent is still healthy and takes a request
    registry = load_registry(fleet.registry)
    assert probe_health(registry.get(AGENT), 10)[0] == "ok"
    key = signing_key(OPERATOR, SECRETS["identities"][OPERATOR][PRIVATE_KEY_ENV])
    with BusClient.for_agent(registry, AGENT, key) as client:
        sent = client.send(AGENT, "request", {"prompt": "still there?"})
        wait_for(lambda: any(message["id"] == sent["id"] for message in client.messages(
            type="request", limit=1000)["messages"]), 30, lambda: "the request in its inbox",
            every=0.5)


def test_the_deploy_puts_the_registry_policy_back(deployed: Fleet) -> None:
    done = deployed.run("deploy", "--limit", AGENT)
    assert done.returncode == 0, done.stdout + done.stderr
    host = deployed.record(done.stdout)["hosts"][AGENT]
    assert (host["changed"], host["restarted"]) == ([
        "Sandbox | Sandbox policy (root's: the test command, its limits, its network "
        "allowlist)"], False)
    policy = json.loads(ssh(deployed, f"cat {POLICY_PATH}"))
    assert policy["argv"] == ["python3", "-m", "pytest", "-q"] and policy["allow"] == []
