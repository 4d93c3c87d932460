"""Planning a deploy loads only what it needs: without a receiver to plan (no
``fleet.repo_url``), the webhook receiver's code and Flask stay unimported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from deploys import webhook
from deploys.context import AgentContext
from fleet.core.registry import load_registry
registry = load_registry("registry.yaml")
agent = registry.get("ezra-primary")
ctx = AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent))
print(webhook.problem(ctx))
print(sorted(name for name in sys.modules if name == "flask" or name.startswith("fleet.webhook")))
"""


def test_no_receiver_to_plan_imports_no_flask() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    reason, imported = done.stdout.splitlines()
    assert reason == ("fleet.repo_url is not set in the registry; set it to the fleet "
                      "repository the receiver deploys from")
    assert imported == "[]"
