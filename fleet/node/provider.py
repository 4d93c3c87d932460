"""One call of an OpenAI-compatible chat API (``POST {base_url}/chat/completions``), with
``requests`` and nothing else: OpenRouter, llama.cpp's server, vLLM and Ollama all speak it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import requests

MAX_ANSWER_BYTES = 4 * 1024 * 1024
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ProviderError(Exception):
    """The chat API failed; ``retryable`` when the same call may succeed later (unreachable,
    overloaded, 5xx, 429), not for a wrong key, model or request."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Completion:
    """What the model answered: its text (or tool calls), token count and the round trip;
    ``prompt_tokens``: how many tokens the prompt it read had (None when not reported)."""

    text: str
    tokens: int
    latency_s: float
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class Provider:
    """An OpenAI-compatible chat API: its base URL (``.../v1``), key (may be empty) and the
    model to ask for."""

    base_url: str
    key: str
    model: str
    timeout: float = 120.0

    def chat(self, messages: list[dict[str, Any]], max_tokens: int = 256,
             tools: list[dict[str, Any]] | None = None, timeout: float | None = None,
             session: requests.Session | None = None,
             temperature: float | None = None) -> Completion:
        """One chat completion (at ``temperature``, else the provider's default);
        :class:`ProviderError` on any failure (no retries here)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": max_tokens}
        if tools:
            body["tools"] = tools
        if temperature is not None:
            body["temperature"] = temperature
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        started = time.monotonic()
        url = f"{self.base_url.rstrip('/')}/chat/completions"
        try:
            with (session or requests).post(url, data=json.dumps(body), headers=headers,
                                            timeout=timeout or self.timeout,
                                            stream=True) as response:
                raw = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
                status = response.status_code
        except requests.RequestException as exc:
            raise ProviderError(f"{url}: unreachable: {type(exc).__name__}",
                                retryable=True) from None
        latency = time.monotonic() - started
        if len(raw) > MAX_ANSWER_BYTES:
            raise ProviderError(f"{url}: answer over {MAX_ANSWER_BYTES} bytes", retryable=False)
        if status != 200:
            detail = raw[:200].decode(errors="replace").replace("\n", " ")
            raise ProviderError(f"{url}: HTTP {status}: {detail}",
                                retryable=status in RETRYABLE_STATUS)
        return parse_completion(raw, latency, url)


def parse_completion(raw: bytes, latency: float, url: str) -> Completion:
    """A chat-completions answer body as a :class:`Completion` (ProviderError if malformed)."""
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        calls = message.get("tool_calls") or []
        usage = data.get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0)
        prompt = usage.get("prompt_tokens")
        prompt_tokens = None if prompt is None else int(prompt)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ProviderError(f"{url}: not a chat completion answer", retryable=False) from None
    if not isinstance(text, str) or not isinstance(calls, list):
        raise ProviderError(f"{url}: not a chat completion answer", retryable=False)
    return Completion(text=text, tokens=tokens, latency_s=latency,
                      finish_reason=choice.get("finish_reason"), tool_calls=calls,
                      message=message, prompt_tokens=prompt_tokens)


PROBE = [{"role": "user", "content": "Say OK."}]
PROBE_TOKENS = 4


def answered_tokens(done: Completion) -> int:
    """How many tokens the model answered: its reported count, else 1 when it sent text or
    tool calls; 0 (an error, not an answer) when it sent neither."""
    if not done.text.strip() and not done.tool_calls:
        return 0
    return done.tokens or 1


def round_trip(provider: Provider, timeout: float = 10.0) -> dict[str, Any]:
    """A live round trip: a short prompt that must come back with tokens within ``timeout``.
    ``{ok, latency_ms, tokens, at, error}``."""
    at = time.time()
    try:
        done = provider.chat(PROBE, max_tokens=PROBE_TOKENS, timeout=timeout)
    except ProviderError as exc:
        return {"ok": False, "latency_ms": None, "tokens": 0, "at": at, "error": str(exc)}
    tokens = answered_tokens(done)
    error = None if tokens else "the model answered no tokens"
    return {"ok": error is None, "latency_ms": round(done.latency_s * 1000, 1),
            "tokens": tokens, "at": at, "error": error}
