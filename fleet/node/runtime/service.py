"""The built-in runtime's service: built from the environment its unit gives it (see
:mod:`fleet.node.runtime`) and run until SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet.core.errors import USER_ERRORS, FleetError
from fleet.core.registry import Agent, Registry, load_registry
from fleet.core.release_marker import running_release
from fleet.core.runtime_config import RuntimeConfigError, runtime_settings
from fleet.node.provider import Provider
from fleet.node.runtime.ask import ask_as
from fleet.node.runtime.loop import Runtime
from fleet.node.runtime.state import write_state

ROUTE_TIMEOUT_S = 300.0


def provider_for(agent: Agent, env: dict[str, str] | os._Environ[str]) -> Provider:
    """The agent's chat API with its key from ``env`` (the secret the registry names)."""
    if not agent.provider_url:
        raise FleetError(f"agent {agent.name!r} has no provider base_url to call",
                         hint="Set `provider: {base_url: ..., api_key: SECRET}` in the "
                              "registry.")
    key = env.get(agent.provider_key, "") if agent.provider_key else ""
    return Provider(base_url=agent.provider_url, key=key, model=agent.model)


def from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> Runtime:
    """The runtime of the agent the environment names."""
    registry = load_registry(env.get("FLEET_REGISTRY", "registry.yaml"))
    agent = registry.get(env.get("FLEET_AGENT", ""))
    own = env.get(PRIVATE_KEY_ENV, "")
    inbox = BusClient.for_agent(registry, agent.name, {agent.name: own}, timeout=30.0)
    soul_path = Path(env.get("FLEET_SOUL") or f"/etc/fleet/{agent.name}/soul.md")
    state_dir = Path(env.get("FLEET_STATE_DIR") or f"/var/lib/fleet/{agent.name}")
    settings = runtime_settings(agent.config)

    def call_tool(name: str, args: dict[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """Run one of the agent's tools through its own gateway (signed as itself) on behalf
        of ``request``: the gateway finds it in the inbox and checks its sender may call the
        tool."""
        return dict(inbox.call("POST", f"/tools/{name}", body={
            "args": args, "on_behalf_of": {"from": request["from"], "id": request["id"]}}))

    return Runtime(agent=agent.name, inbox=inbox, provider=provider_for(agent, env),
                   soul=lambda: soul_path.read_text(encoding="utf-8"), state_dir=state_dir,
                   release=running_release()[0], max_tokens=settings.max_tokens,
                   temperature=settings.temperature,
                   model_check_s=settings.model_check_s, memory=settings.memory,
                   tools=[tool.openai() for tool in agent.tools],
                   call_tool=call_tool if agent.tools else None,
                   route=lambda capability, prompt: routed(registry, agent.name, own,
                                                           capability, prompt))


def routed(registry: Registry, agent: str, key: str, capability: str,
           prompt: str) -> dict[str, Any]:
    """Ask a healthy agent with ``capability`` (not ``agent``) as ``agent``, through a client
    of its own (routes run side by side), and return the answer, naming who answered."""
    with BusClient.for_agent(registry, agent, {agent: key}, timeout=30.0) as client:
        answer = ask_as(client, registry, capability, prompt, timeout=ROUTE_TIMEOUT_S)
    payload = answer.payload if isinstance(answer.payload, dict) else {"text": answer.payload}
    return {**payload, "routed_to": answer.agent, "routed_by": client.agent}


def main(make: Callable[[], Runtime] = from_env) -> int:
    """Run the runtime ``make`` builds (from the environment) until SIGTERM/SIGINT. A
    runtime that cannot start (a config value it cannot use, no provider) says why in its
    state file, so ``/health`` and verify name the cause, and exits 1."""
    started = time.time()
    try:
        runtime = make()
    except (*USER_ERRORS, RuntimeConfigError) as exc:
        state_dir = os.environ.get("FLEET_STATE_DIR") or ""
        if state_dir:
            write_state(state_dir, {"state": "failed", "error": str(exc)[:500],
                                    "pid": os.getpid(), "started": started})
        print(f"fleet runtime: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        runtime.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runtime.run()
    runtime.status["state"] = "stopped"
    runtime.save(force=True)
    return 0
