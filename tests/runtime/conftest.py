"""Runtime fixtures: a mock model provider speaking OpenAI's chat-completions wire format on
loopback, and two real gateways (ezra asks, bezalel thinks) on a temp registry."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.bus.conftest import FAST_RETRIES, KEYS, Gateway, free_port
from tests.jsonhttp import LoopbackServer, answer_json


class MockProvider:
    """``POST /v1/chat/completions`` answering ``reply`` (or failing as told), recording
    every request body; 401 unless the bearer is ``key`` or one of ``keys``; on loopback, or on
    ``host`` (a lab's bridge address, for its nodes)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: list[int] = []  # HTTP statuses to answer first, one per call
        self.reply = "four"
        self.hold: threading.Event | None = None  # answers wait until it is set
        self.script: list[dict[str, Any]] = []  # assistant messages to answer first, in order
        self.key = "sk-test-KEY-0123456789"
        self.keys: set[str] = set()  # more keys it accepts (both halves of a rotation)
        self.down = False  # every call answers 503 while set
        self.tokens = 1  # the completion_tokens each answer reports
        self.respond: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
        """The assistant message for a request body (None: as if unset), after ``script``."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                outer.requests.append(body)
                if self.headers.get("Authorization") not in {
                        f"Bearer {key}" for key in (outer.key, *outer.keys)}:
                    return self.answer(401, {"error": {"message": "bad key"}})
                if outer.hold is not None:
                    outer.hold.wait(60)
                if outer.failures:
                    return self.answer(outer.failures.pop(0), {"error": {"message": "busy"}})
                if outer.down:
                    return self.answer(503, {"error": {"message": "model server down"}})
                message = outer.script.pop(0) if outer.script else (
                    outer.respond and outer.respond(body)) or {
                    "role": "assistant", "content": outer.reply}
                self.answer(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": outer.tokens,
                              "total_tokens": 5 + outer.tokens}})

            def answer(self, status: int, data: dict[str, Any]) -> None:
                answer_json(self, status, data)

            def log_message(self, *args: Any) -> None:
                pass

        self.loopback = LoopbackServer(Handler, free_port() if host == "127.0.0.1" else 0,
                                       host)
        self.url = f"{self.loopback.address}/v1"
        self.close = self.loopback.close


@pytest.fixture
def provider() -> Iterator[MockProvider]:
    mock = MockProvider()
    try:
        yield mock
    finally:
        mock.close()


def write_registry(folder: Path, provider_url: str) -> Path:
    """ezra (orchestrator, no runtime) and bezalel (worker, built-in runtime with the mock
    provider; capability code) on loopback."""
    text = f"""wizards:
  ezra:
    host: 127.0.0.1
    role: orchestrator
    model: test/m
    gateway_port: {free_port()}
  bezalel:
    host: 127.0.0.1
    role: worker
    model: test/m
    gateway_port: {free_port()}
    capabilities: [code]
    provider:
      name: mock
      base_url: {provider_url}
      api_key: MOCK_API_KEY
    tools:
      words:
        description: Count the words of a text.
        handler: tests.runtime.tool_handlers:count_words
        args:
          type: object
          required: [text]
          properties:
            text: {{type: string, maxLength: 1000}}
        callers: [ezra]
  allegro:
    host: 127.0.0.1
    role: worker
    model: test/m
    gateway_port: {free_port()}
    capabilities: [code]
    provider: {{base_url: '{provider_url}', api_key: MOCK_API_KEY}}
  ghost:
    host: 127.0.0.1
    role: worker
    model: test/m
    gateway_port: {free_port()}
"""
    path = folder / "registry.yaml"
    path.write_text(text)
    (folder / "souls").mkdir()
    for name in ("ezra", "bezalel", "allegro", "ghost"):
        (folder / "souls" / f"{name}.md").write_text(f"You are {name}. Answer briefly.\n")
    return path


@pytest.fixture
def fleet_pair(tmp_path: Path, provider: MockProvider) -> Iterator[tuple[Path, dict[str, Gateway]]]:
    """The registry and running gateways of ezra, bezalel and allegro (both workers think
    with the mock provider and declare capability code)."""
    registry = write_registry(tmp_path, provider.url)
    gateways = {}
    for name in ("ezra", "bezalel", "allegro"):
        config = tmp_path / f"config-{name}.json"
        config.write_text("{}\n")
        env = {**FAST_RETRIES, "FLEET_CONFIG": str(config),
               "FLEET_SOUL": str(tmp_path / "souls" / f"{name}.md")}
        gateways[name] = Gateway(name, registry, tmp_path / f"state-{name}", env)
    try:
        for gateway in gateways.values():
            gateway.start()
        yield registry, gateways
    finally:
        for gateway in gateways.values():
            gateway.stop()


__all__ = ["KEYS", "MockProvider"]
