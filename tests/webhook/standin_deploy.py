"""Stand-in for the real deploy command in tests: records when it ran, sleeps, exits.

Appends one JSON line ``{"run", "sha", "pid", "start", "end"}`` to ``$STANDIN_RECORD``; sleeps
``$STANDIN_SLEEP`` seconds; prints a pyinfra-style ``--json`` result document for the hosts in
``$STANDIN_HOSTS`` (comma-separated) after the text of ``$STANDIN_PRINT``; exits with
``$STANDIN_EXIT``.
"""

import json
import os
import sys
import time

start = time.time()
print(f"stand-in deploy of {os.environ['FLEET_DEPLOY_SHA']} in {os.getcwd()}", flush=True)
print(os.environ.get("STANDIN_PRINT", ""), flush=True)
time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
hosts = [host for host in os.environ.get("STANDIN_HOSTS", "").split(",") if host]
exit_status = int(os.environ.get("STANDIN_EXIT", "0"))
operation = {"op_hash": "1", "name": "Install release", "names": ["Install release"],
             "args": [], "hosts": len(hosts), "success": hosts[:1], "no_change": hosts[1:],
             "error": []}
if exit_status:
    operation["error"], operation["success"] = hosts[:1], []
print(json.dumps({"plan": [], "results": {
    "operations": [operation], "totals": {}, "failed_hosts": operation["error"]}}), flush=True)
record = {"run": int(os.environ["FLEET_DEPLOY_RUN"]), "sha": os.environ["FLEET_DEPLOY_SHA"],
          "pid": os.getpid(), "start": start, "end": time.time(),
          "secret_seen": "FLEET_WEBHOOK_SECRET" in os.environ}
with open(os.environ["STANDIN_RECORD"], "a") as handle:
    handle.write(json.dumps(record) + "\n")
sys.exit(exit_status)
