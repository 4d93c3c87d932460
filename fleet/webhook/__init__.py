"""The deploy webhook receiver: a signed push of the deploy tag runs the fleet deploy.

``create_app()`` reads :class:`fleet.webhook.config.Settings` from the environment (or takes
``SETTINGS`` from ``test_config``); gunicorn serves it as ``webhook_app:app`` with the worker
model of :mod:`fleet.webhook.serving` (``--config python:fleet.webhook.serving``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from fleet.webhook import api, board, db, dispatcher, hooks, openapi
from fleet.webhook.config import load_settings
from fleet.webhook.hooks import MAX_BODY_BYTES


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the receiver; ``test_config`` overrides ``SETTINGS``, ``DISPATCH`` and friends."""
    app = Flask(__name__, static_folder=None)
    # One byte over the limit: werkzeug stops a chunked body there, so a body of exactly
    # MAX_BODY_BYTES can be told from a larger one (hooks.read_body answers 413 for those).
    app.config.from_mapping(MAX_CONTENT_LENGTH=MAX_BODY_BYTES + 1, DISPATCH=True)
    if test_config is not None:
        app.config.update(test_config)
    if app.config.get("SETTINGS") is None:
        app.config["SETTINGS"] = load_settings()
    app.config["SETTINGS"].state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    db.init_app(app)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_error_handler(HTTPException, _json_error)
    board.init_app(app)
    dispatcher.init_app(app)
    return app


def _json_error(exc: HTTPException) -> tuple[Response, int]:
    """Every HTTP error as ``{"error": ...}`` with the error's headers (405: ``Allow``);
    413 says what the limit is."""
    code = exc.code or 500
    message = exc.description or exc.name
    if code == 413:
        message = (f"body is larger than {MAX_BODY_BYTES} bytes; a push event is far smaller, "
                   "so this is not a push this receiver takes")
    response = jsonify(error=message)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, code
