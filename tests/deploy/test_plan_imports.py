"""Planning a deploy loads only what it needs: without a receiver to plan (no
``fleet.repo_url``), the webhook receiver's code and Flask stay unimported. And the deploy
file pyinfra runs is named among the modules, so pyinfra's per-operation walk of the call
stack finds it without scanning them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploys import context

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


def frame_module(path: Path) -> object:
    """What ``inspect.getmodule`` finds for a frame of ``path`` run as pyinfra runs a deploy
    file (compiled with its name, executed without a module)."""
    code = compile("import inspect, sys\nfound = inspect.getmodule(sys._getframe())\n",
                   str(path), "exec")
    scope: dict[str, object] = {"__file__": str(path)}
    exec(code, scope)
    return scope["found"]


def test_a_named_deploy_file_is_found_among_the_modules(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """pyinfra's walk of the call stack at each operation looks every frame up with
    ``inspect.getmodule``: the deploy file's frame, once named, hits its cache instead of a
    scan of every module, finding the named module (the same one when named again)."""
    monkeypatch.delitem(sys.modules, context.DEPLOY_FILE_MODULE, raising=False)
    deploy_file = tmp_path / "deploy.py"
    deploy_file.write_text("")
    assert frame_module(deploy_file) is None
    context.name_as_module(str(deploy_file))
    named = sys.modules[context.DEPLOY_FILE_MODULE]
    context.name_as_module(str(deploy_file))
    assert sys.modules[context.DEPLOY_FILE_MODULE] is named
    assert frame_module(deploy_file) is named
    other = tmp_path / "other" / "deploy.py"
    other.parent.mkdir()
    other.write_text("")
    context.name_as_module(str(other))
    assert frame_module(other) is sys.modules[context.DEPLOY_FILE_MODULE] is not named
