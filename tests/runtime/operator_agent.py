"""An operator's own agent program (run by the lab test instead of the built-in runtime): it
answers each request with the model's text prefixed by its own name, with the environment
every runtime gets (agent, registry copy, bus keys, provider URL and key name), and keeps the
runtime contract: ``runtime.json`` in its state dir, rewritten every 2 s. It starts with its
gateway and may be up first: an unreachable gateway is retried, never a reason to exit."""

import json
import os
import time
from pathlib import Path

import requests

from bus.client import BusClient, GatewayError

client = BusClient.from_env()  # FLEET_AGENT, its FLEET_BUS_PRIVATE_KEY, FLEET_GATEWAY_URL
url = os.environ["FLEET_PROVIDER_URL"] + "/chat/completions"
state = Path(os.environ["FLEET_STATE_DIR"]) / "runtime.json"
started, written = time.time(), 0.0


def keep_contract() -> None:
    """Write the runtime contract's state file atomically (temporary file, then rename)."""
    partial = state.with_name(".runtime.json.operator")
    partial.write_text(json.dumps({"state": "ready", "heartbeat": time.time(),
                                   "started": started, "pid": os.getpid()}))
    partial.replace(state)


def waiting() -> list[dict]:
    """The unanswered requests; none while the gateway is not up (yet)."""
    try:
        return list(client.messages(type="request", unacked=1)["messages"])
    except GatewayError as exc:
        if not exc.retryable:
            raise
        return []


while True:
    for message in waiting():
        body = {"model": os.environ["FLEET_MODEL"], "max_tokens": 16,
                "messages": [{"role": "user", "content": str(message["payload"])}]}
        answer = requests.post(url, json=body, timeout=120).json()
        text = answer["choices"][0]["message"]["content"]
        client.send(message.get("reply_to") or message["from"], "response",
                    {"text": text, "runtime": "operator-agent",
                     "tokens": answer["usage"]["completion_tokens"]},
                    id=f"op-{message['id']}", correlation_id=message["correlation_id"])
        client.ack(message["from"], message["id"])
    if time.time() - written >= 2:
        keep_contract()
        written = time.time()
    time.sleep(0.2)
