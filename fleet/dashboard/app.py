"""The dashboard as its own app, for ``fleet dashboard`` on the controller (loopback, no
token): ``create_app()`` reads ``$FLEET_REGISTRY``, ``$FLEET_RECORDS_DIR`` (default
``./records``) and ``$FLEET_DASHBOARD_REFRESH`` (seconds, default 5). Its Work section reads
the orchestrator's work items with the operator's key (``$FLEET_SECRETS``), as ``fleet work
list`` does. ``GET /openapi.json``
describes every route (:mod:`fleet.dashboard.openapi`); every HTTP error is JSON
``{"error": ...}``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, redirect, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from fleet import dashboard
from fleet.control.records import records_dir
from fleet.core.registry import resolve_registry_path
from fleet.dashboard import openapi
from fleet.dashboard.data import Dashboard, work_board

REFRESH_ENV = "FLEET_DASHBOARD_REFRESH"


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The dashboard app; ``test_config`` may set REGISTRY_PATH, RECORDS_DIR, REFRESH_S and
    WORK (False: no Work section)."""
    app = Flask(__name__, static_folder=None)  # the blueprint serves /dashboard/static/
    app.config.from_mapping(
        REGISTRY_PATH=str(resolve_registry_path(None)), RECORDS_DIR=str(records_dir()),
        REFRESH_S=float(os.environ.get(REFRESH_ENV) or 5.0), WORK=True)
    if test_config:
        app.config.update(test_config)
    source = Dashboard(Path(app.config["REGISTRY_PATH"]), Path(app.config["RECORDS_DIR"]),
                       refresh_s=float(app.config["REFRESH_S"]),
                       work=work_board if app.config["WORK"] else None)
    dashboard.init_app(app, source)
    app.register_blueprint(openapi.bp)
    app.register_error_handler(HTTPException, json_error)

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("dashboard.page"))

    return app


def json_error(exc: HTTPException) -> tuple[Response, int]:
    """Every HTTP error (404, 405...) as ``{"error": ...}``, with its headers (405:
    ``Allow``)."""
    response = jsonify(error=f"{exc.code} {exc.name}: {exc.description}")
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, exc.code or 500
