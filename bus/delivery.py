"""Sending outbox rows to a recipient's gateway: signed POSTs over keep-alive connections.

One row goes to ``POST /message``; several rows for the same recipient go to
``POST /messages/batch`` in chunks under the body limit (falling back to single POSTs for a
gateway without the batch endpoint). Each row gets ``(status, detail)``: 2xx means stored,
:data:`EXPIRED` that the recipient found its ``ttl`` run out.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

from bus.keys import SigningKey
from bus.schema import MAX_BATCH
from bus.signing import sign
from bus.state import Address

EXPIRED = 410  # stands for a 200 answer {"status": "expired"}: the ttl ran out, give up
CHUNK_BYTES = 192 * 1024  # below the receiver's default 256 KiB limit


class Sender:
    """Delivers rows signed with ``key`` (one instance per delivery thread: it owns
    connections)."""

    def __init__(self, key: SigningKey, timeout: float) -> None:
        self.agent, self.key, self.timeout = key.name, key, timeout
        self.open: dict[tuple[str, int], http.client.HTTPConnection] = {}

    def send(self, to: Address, bodies: list[str]) -> list[tuple[int, str]]:
        """Deliver the JSON ``bodies`` to ``to``; one (HTTP status, detail) per body."""
        results: list[tuple[int, str]] = []
        for chunk in _chunks(bodies):
            if len(chunk) == 1:
                results.append(_expired(*self._post(to, "/message", chunk[0].encode())))
            else:
                results += self._post_batch(to, chunk)
        return results

    def _post_batch(self, to: Address, chunk: list[str]) -> list[tuple[int, str]]:
        body = ('{"messages":[' + ",".join(chunk) + "]}").encode()
        status, text = self._post(to, "/messages/batch", body, whole=True)
        if status in (404, 405):  # an older gateway: one by one
            return [_expired(*self._post(to, "/message", item.encode())) for item in chunk]
        if status != 200:
            return [(status, text[:500])] * len(chunk)
        try:
            answers = json.loads(text)["results"]
        except (ValueError, KeyError, TypeError):
            return [(502, f"unreadable batch answer: {text[:200]}")] * len(chunk)
        codes = {"stored": 201, "duplicate": 200, "over_quota": 429, "expired": EXPIRED}
        return [(codes.get(answer.get("status"), 400),
                 json.dumps(answer.get("problems") or answer)[:500]) for answer in answers]

    def _post(self, to: Address, path: str, body: bytes, whole: bool = False) -> tuple[int, str]:
        """POST signed ``body``; status 0 when unreachable. A kept-alive connection the server
        closed is retried once on a new one (the receiver's dedup makes that safe)."""
        address = (to.host, to.gateway_port)
        host = f"[{to.host}]" if ":" in to.host else to.host
        headers = sign(self.key, "POST", f"http://{host}:{to.gateway_port}{path}", body)
        headers["Content-Type"] = "application/json"
        for fresh in (address not in self.open, True):
            connection = self.open.pop(address, None) or http.client.HTTPConnection(
                *address, timeout=self.timeout)
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if fresh:
                    return 0, f"{type(exc).__name__}: {exc}"[:500]
                continue
            if response.will_close:
                connection.close()
            else:
                self.open[address] = connection
            text = data.decode("utf-8", "replace")
            return response.status, text if whole else text[:500]
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every connection."""
        for connection in self.open.values():
            connection.close()
        self.open.clear()


def _expired(status: int, text: str) -> tuple[int, str]:
    """A single POST's answer, with ``{"status": "expired"}`` as :data:`EXPIRED`."""
    if status == 200 and '"expired"' in text:
        try:
            if json.loads(text).get("status") == "expired":
                return EXPIRED, "the recipient says the ttl ran out"
        except (ValueError, AttributeError):
            pass
    return status, text


def _chunks(bodies: list[str]) -> Iterator[list[str]]:
    """Consecutive runs of ``bodies`` under :data:`CHUNK_BYTES` and the batch size limit."""
    chunk: list[str] = []
    size = 0
    for body in bodies:
        if chunk and (size + len(body) > CHUNK_BYTES or len(chunk) == MAX_BATCH):
            yield chunk
            chunk, size = [], 0
        chunk.append(body)
        size += len(body) + 1
    if chunk:
        yield chunk
