"""Alerts of the receiver to the orchestrator, over the bus.

The receiver queues the alert in the orchestrator's own outbox, addressed to the
orchestrator, so it is durable and lands in the orchestrator's inbox like any message
(``type: alert``, ``payload.source: fleet-webhook``). It signs with its own bus key (the
``receiver`` identity's ``FLEET_BUS_PRIVATE_KEY`` in its environment), which gateways allow to
queue alerts and nothing else. The message id is derived from the check, so a retried check
queues its alert once.
"""

from __future__ import annotations

from pathlib import Path

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV, RECEIVER, signing_key
from fleet.core.errors import USER_ERRORS
from fleet.core.registry import load_registry
from fleet.webhook.config import Settings

SOURCE = "fleet-webhook"


def drift_alert(settings: Settings, registry_path: Path, kind: str, drifted: list[str],
                check_id: int) -> str:
    """Queue the alert that drift ``kind`` (``appeared`` or ``cleared``) with the orchestrator;
    ``sent`` or the reason it could not be."""
    try:
        registry = load_registry(registry_path)
        orchestrators = [agent.name for agent in registry if agent.role == "orchestrator"]
        if not orchestrators:
            return "not sent: the registry has no orchestrator"
        own = settings.env.get(PRIVATE_KEY_ENV)
        if not own:
            return f"not sent: the receiver has no bus key ({PRIVATE_KEY_ENV})"
        target = orchestrators[0]
        text = (f"drift {kind}: {', '.join(drifted)}" if drifted
                else "drift cleared: every host is as deployed")
        with BusClient.for_agent(registry, target, signing_key(RECEIVER, own)) as client:
            client.send(target, "alert", {
                "source": SOURCE, "kind": "drift", "state": kind, "hosts": drifted,
                "check": check_id, "text": text}, id=f"{SOURCE}-drift-check-{check_id}")
    except (*USER_ERRORS, OSError) as exc:
        return f"not sent: {exc}"
    return "sent"
