"""``GET /.well-known/agent-card.json``: the agent's A2A agent card, built from the registry."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from bus.a2a import PATH as A2A_PATH
from bus.signing import SECURITY_SCHEMES
from fleet.core.release_marker import running_release
from fleet.node.gateway.agent import current_agent, current_registry

bp = Blueprint("card", __name__)
CARD_PATH = "/.well-known/agent-card.json"
A2A_VERSIONS = ("1.0", "0.3")  # A2A 1.0 (SendMessage), 0.3 (message/send) at the same URL
# The bus's signature (RFC 9421, Ed25519) as A2A security schemes (0.3 / OpenAPI form,
# which a2a-sdk 1.x maps to its 1.0 model): every call to the A2A endpoint needs both.


def init_app(app: Flask) -> None:
    """Register the agent-card blueprint."""
    app.register_blueprint(bp)


def agent_card() -> dict[str, Any]:
    """The A2A agent card: identity, the JSON-RPC endpoint the bus serves (``/a2a``, A2A 1.0
    and 0.3) with the signature it needs, version, capabilities and one skill per registry
    capability. Both a2a-sdk 1.x (1.0 model) and 0.3 clients read it."""
    agent = current_agent()
    registry = current_registry()
    url = f"{agent.gateway_url}{A2A_PATH}"
    return {
        "name": agent.name,
        "description": agent.description or f"{agent.role} agent of fleet {registry.name}",
        "supportedInterfaces": [{"url": url, "protocolBinding": "JSONRPC",
                                 "protocolVersion": version} for version in A2A_VERSIONS],
        "url": url,  # the 0.3 fields of the same interface
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
        "version": current_app.config.get("RELEASE") or running_release()[0],
        "provider": {"organization": registry.name, "url": agent.gateway_url},
        "capabilities": {"streaming": False, "pushNotifications": False},
        "securitySchemes": SECURITY_SCHEMES,
        "security": [{name: [] for name in SECURITY_SCHEMES}],
        "defaultInputModes": ["text/plain", "application/json"],
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
