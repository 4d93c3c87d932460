"""``GET /.well-known/agent-card.json``: the agent's A2A agent card, built from the registry."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from fleet.gateway import current_agent, current_registry
from fleet.release import running_release

bp = Blueprint("card", __name__)
CARD_PATH = "/.well-known/agent-card.json"
A2A_PROTOCOL_VERSION = "0.3.0"


def init_app(app: Flask) -> None:
    """Register the agent-card blueprint."""
    app.register_blueprint(bp)


def agent_card() -> dict[str, Any]:
    """The A2A agent card: identity, endpoint, version, capabilities and one skill per
    registry capability."""
    agent = current_agent()
    registry = current_registry()
    return {
        "protocolVersion": A2A_PROTOCOL_VERSION,
        "name": agent.name,
        "description": agent.description or f"{agent.role} agent of fleet {registry.name}",
        "url": f"{agent.gateway_url}/message",
        "preferredTransport": "HTTP+JSON",
        "version": current_app.config.get("RELEASE") or running_release()[0],
        "provider": {"organization": registry.name, "url": agent.gateway_url},
        "capabilities": {"streaming": False, "pushNotifications": False,
                         "stateTransitionHistory": False},
        "defaultInputModes": ["application/cloudevents+json"],
        "defaultOutputModes": ["application/json"],
        "skills": [
            {"id": capability, "name": capability, "tags": [capability, agent.role],
             "description": f"{agent.name} offers {capability}."}
            for capability in agent.capabilities
        ],
    }


@bp.get(CARD_PATH)
def card() -> ResponseReturnValue:
    """This agent's A2A card."""
    return jsonify(agent_card())
