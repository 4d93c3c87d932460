"""Read run records over the receiver's HTTP API (what ``fleet runs --url`` uses)."""

from __future__ import annotations

from typing import Any

import requests

from fleet.core.errors import WebhookError

TIMEOUT = 10.0


def fetch(url: str, path: str, token: str | None, params: dict[str, Any] | None = None) -> Any:
    """GET ``url`` + ``path`` with the read token; the JSON body, or :class:`WebhookError`."""
    if not token:
        raise WebhookError("no read token to send to the webhook API",
                           hint="Pass --token or set FLEET_READ_TOKEN.")
    target = url.rstrip("/") + path
    try:
        response = requests.get(target, params=params, timeout=TIMEOUT,
                                headers={"Authorization": f"Bearer {token}"})
    except requests.RequestException as exc:
        raise WebhookError(f"{target}: cannot reach the webhook receiver: {exc}",
                           hint="Check --url and that `fleet webhook serve` runs there.") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 401:
        raise WebhookError(f"{target}: the read token was refused",
                           hint="Pass the receiver's FLEET_READ_TOKEN with --token.")
    if response.status_code != 200:
        message = body.get("error") if isinstance(body, dict) else None
        raise WebhookError(f"{target}: HTTP {response.status_code}: {message or response.reason}")
    return body
