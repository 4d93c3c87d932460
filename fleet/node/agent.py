"""What an agent's runtime unit runs (``python3 -m fleet.runtime``): the built-in runtime
(:mod:`fleet.node.runtime`) with the work it takes on: a worker whose capabilities work items
need takes ``work.item`` messages (:mod:`fleet.node.work.worker`)."""

from __future__ import annotations

import os
from pathlib import Path

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet.core.registry import load_registry
from fleet.core.work_config import holds_forge_tokens
from fleet.node.runtime import service as runtime
from fleet.node.runtime.loop import Runtime
from fleet.node.work.messages import ITEM
from fleet.node.work.worker import Worker


def from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> Runtime:
    """The runtime of the agent the environment names, taking work items when it is a
    worker with a capability they need."""
    made = runtime.from_env(env)
    registry = load_registry(env.get("FLEET_REGISTRY", "registry.yaml"))
    agent = registry.get(made.agent)
    if agent.role == "orchestrator" or not holds_forge_tokens(
            registry.work, agent.role, agent.capabilities):
        return made
    own = env.get(PRIVATE_KEY_ENV, "")
    worker = Worker(agent.name, registry, Path(made.state_dir), made.provider, env=env,
                    sender=lambda: BusClient.for_agent(registry, agent.name, {agent.name: own},
                                                       timeout=30.0),
                    soul=made.soul, stop=made.stop)
    made.handlers = {**made.handlers, ITEM: worker.offer}
    made.on_start = worker.resume  # the item it was on when it died, if any
    return made


def main() -> int:
    return runtime.main(from_env)
