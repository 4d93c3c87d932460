"""Stand-in for ``python -m fleet deploy`` in tests: writes a run record the same way, sleeps.

Like the rollout it writes ``$FLEET_RECORDS_DIR/$FLEET_RUN_ID.json`` (``status``, ``release``,
``stages``: canary = the first host of ``$STANDIN_HOSTS``, workers = the rest, ``hosts``),
with ``$STANDIN_STATUS`` as the run's status (default ``ok``; ``failed`` fails the canary
and skips the workers) and exits 0 only when it is ``ok``. The release is the commit's
``sha[:12]``; when ``$STANDIN_FLEET`` names a JSON file ``{agent: release}`` (the loopback
fleet's state), the deployed hosts are set to it. It appends one JSON line ``{"run", "sha",
"pid", "start", "end", "secret_seen"}`` to ``$STANDIN_RECORD``, writes its pid to
``$STANDIN_PIDFILE`` when set, prints ``$STANDIN_PRINT`` and sleeps ``$STANDIN_SLEEP`` s.
With ``$STANDIN_SECRET`` naming a fleet value, it opens the deploy's secrets as ``fleet deploy``
does (``$FLEET_SECRETS``, sealed ones with ``$FLEET_AGE_IDENTITY``), prints that value and
records its SHA-256 (``secret_sha256``).
"""

import json
import os
import sys
import time
from pathlib import Path

start = time.time()
sha = os.environ["FLEET_DEPLOY_SHA"]
if os.environ.get("STANDIN_PIDFILE"):
    Path(os.environ["STANDIN_PIDFILE"]).write_text(f"{os.getpid()}\n")
print(f"stand-in deploy of {sha} in {os.getcwd()}", flush=True)
print(os.environ.get("STANDIN_PRINT", ""), flush=True)
opened = ""
if os.environ.get("STANDIN_SECRET"):
    import hashlib

    from fleet.control.secrets import load_secrets

    value = load_secrets().fleet[os.environ["STANDIN_SECRET"]]
    print(f"stand-in deploy: {os.environ['STANDIN_SECRET']}={value}", flush=True)
    opened = hashlib.sha256(value.encode()).hexdigest()
for second in range(int(float(os.environ.get("STANDIN_SLEEP", "0")))):
    print(f"stand-in deploy: second {second + 1}", flush=True)
    time.sleep(1)
time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")) % 1)
hosts = [host for host in os.environ.get("STANDIN_HOSTS", "").split(",") if host]
status = os.environ.get("STANDIN_STATUS", "ok")
release = sha[:12]
canary, workers = hosts[:1], hosts[1:]
entries = {name: {"status": "ok", "release": release, "expected_release": release,
                  "changed": ["Install release"], "restarted": True, "drift": []}
           for name in hosts}
stages = [{"stage": "canary", "hosts": canary, "outcome": {name: "ok" for name in canary}}]
skipped: list[str] = []
if status == "failed" and canary:
    entries[canary[0]].update(status="rolled_back", release="previous",
                              reason="verify: /health answered 503; rolled back")
    stages[0]["outcome"] = {canary[0]: "rolled_back"}
    skipped = workers
    for name in workers:
        entries[name] = {"status": "skipped", "reason": "the canary failed"}
else:
    stages.append({"stage": "workers", "hosts": workers,
                   "outcome": {name: "ok" for name in workers}})
deployed = [name for name, entry in entries.items() if entry["status"] == "ok"]
if os.environ.get("STANDIN_FLEET"):
    fleet_file = Path(os.environ["STANDIN_FLEET"])
    state = json.loads(fleet_file.read_text()) if fleet_file.exists() else {}
    state.update({name: release for name in deployed})
    fleet_file.write_text(json.dumps(state))
records = Path(os.environ["FLEET_RECORDS_DIR"])
records.mkdir(parents=True, exist_ok=True)
(records / f"{os.environ['FLEET_RUN_ID']}.json").write_text(json.dumps({
    "run_id": os.environ["FLEET_RUN_ID"], "kind": "deploy", "status": status,
    "release": release, "stages": stages, "skipped": skipped, "hosts": entries}))
record = {"run": int(os.environ["FLEET_DEPLOY_RUN"]), "sha": sha, "pid": os.getpid(),
          "start": start, "end": time.time(),
          "secret_seen": "FLEET_WEBHOOK_SECRET" in os.environ, "secret_sha256": opened}
with open(os.environ["STANDIN_RECORD"], "a") as handle:
    handle.write(json.dumps(record) + "\n")
print(f"==> run {os.environ['FLEET_RUN_ID']}: {status}", flush=True)
sys.exit(0 if status == "ok" else 1)
