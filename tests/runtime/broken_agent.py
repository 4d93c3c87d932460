"""An operator's runtime that does not work, as the lab test deploys it: ``exit`` exits at
once; ``exit-after-2s`` keeps the runtime contract for 2 s, then exits; ``silent`` runs and
never writes its state."""

import json
import os
import sys
import time
from pathlib import Path

mode = sys.argv[1]
if mode == "exit":
    sys.exit(1)
if mode == "exit-after-2s":
    started = time.time()
    Path(os.environ["FLEET_STATE_DIR"], "runtime.json").write_text(json.dumps(
        {"state": "ready", "heartbeat": started, "started": started, "pid": os.getpid()}))
    time.sleep(2)
    sys.exit(1)
while True:
    time.sleep(60)
