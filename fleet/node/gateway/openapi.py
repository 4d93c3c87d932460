"""The gateway's own parts in its ``/openapi.json``: the bus serves the document, and each part
mounted beside it (tools, memory) adds its paths as the document goes out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request


def documenting(paths: Callable[[], dict[str, Any]]) -> Callable[[Response], Response]:
    """An ``after_request`` hook adding ``paths()`` to the gateway's ``/openapi.json``."""

    def document(response: Response) -> Response:
        if request.path != "/openapi.json" or response.status_code != 200:
            return response
        found = response.get_json()
        found["paths"].update(paths())
        response.set_data(current_app.json.dumps(found))
        return response

    return document


def json_answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response with a JSON body (any object unless ``schema`` says more)."""
    return {"description": description, "content": {"application/json": {
        "schema": schema or {"type": "object"}}}}
