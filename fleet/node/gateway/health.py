"""``GET /health``: a deep check of the running agent, 200 when healthy, else 503 with problems.

Settings (from the environment the systemd unit gives the gateway):
``CONFIG`` (``$FLEET_CONFIG``), the agent config file whose sha256 is the config hash,
and ``SOUL`` (``$FLEET_SOUL``), the agent's soul file. The release id comes from the
``RELEASE`` file of the release the code was loaded from (see :mod:`fleet.control.release`).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from bus.openapi import OPENAPI_ATTRIBUTE
from fleet.core.digests import file_sha256
from fleet.core.errors import DeployError
from fleet.core.release_marker import BROKEN_ENV, Broken, running_release
from fleet.node.gateway.agent import current_agent
from fleet.node.runtime.thinking import runtime_report

bp = Blueprint("health", __name__)


def state_writable(state_dir: str) -> bool:
    """Whether a file can be created (and removed) in the state dir right now."""
    try:
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".health-"):
            return True
    except OSError:
        return False


def init_app(app: Flask) -> None:
    """Register the blueprint and read the facts fixed at start-up (release, config hash)."""
    agent = app.config["AGENT"]
    app.config["CONFIG"] = app.config.get("CONFIG") or f"/etc/fleet/{agent}/config.json"
    app.config["SOUL"] = app.config.get("SOUL") or f"/etc/fleet/{agent}/soul.md"
    release, broken = running_release()
    if broken is Broken.EXIT:  # gunicorn's worker fails to boot, so the gateway process exits
        raise DeployError(f"release {release} was built broken on purpose "
                          f"({BROKEN_ENV}=exit): the gateway exits at start-up",
                          hint="Deploy a normal release.")
    app.config.setdefault("RELEASE", release)
    app.config.setdefault("RELEASE_BROKEN", bool(broken))
    app.config["CONFIG_HASH"] = file_sha256(app.config["CONFIG"])
    app.config["STARTED_AT"] = time.monotonic()
    app.register_blueprint(bp)


def health_report() -> dict[str, Any]:
    """The health document (``status`` is ``ok`` exactly when ``problems`` is empty)."""
    config = current_app.config
    agent = current_agent()
    problems: list[str] = []
    if config["RELEASE_BROKEN"]:
        problems.append(f"release {config['RELEASE']} was built broken on purpose "
                        f"({BROKEN_ENV}=1); deploy a normal release")
    if config["CONFIG_HASH"] is None:
        problems.append(f"config file {config['CONFIG']} was not readable at start-up")
    soul = file_sha256(config["SOUL"])
    if soul is None:
        problems.append(f"soul file {config['SOUL']} is not readable")
    writable = state_writable(config["STATE_DIR"])
    if not writable:
        problems.append(f"state dir {config['STATE_DIR']} is not writable")
    runtime = runtime_report(agent, config["STATE_DIR"], config["RELEASE"],
                             live=request.args.get("roundtrip") == "1")
    problems += runtime.pop("problems")
    return {
        "status": "fail" if problems else "ok",
        "agent": agent.name,
        "role": agent.role,
        "model": agent.model,
        "release": config["RELEASE"],
        "config_hash": config["CONFIG_HASH"],
        "soul_sha256": soul,
        "state_writable": writable,
        "uptime_s": round(time.monotonic() - config["STARTED_AT"], 1),
        "runtime": runtime,
        "problems": problems,
    }


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Deep health of this agent; 503 when any check fails. ``?roundtrip=1`` also asks the
    model for a live round trip (at most one every few seconds)."""
    report = health_report()
    return jsonify(report), 200 if report["status"] == "ok" else 503


_REPORT: dict[str, Any] = {
    "type": "object", "required": ["status", "agent", "problems", "runtime"],
    "properties": {"status": {"enum": ["ok", "fail"]}, "agent": {"type": "string"},
                   "problems": {"type": "array", "items": {"type": "string"}},
                   "runtime": {"type": "object"}}}
setattr(health, OPENAPI_ATTRIBUTE, {
    "parameters": [{"name": "roundtrip", "in": "query", "required": False,
                    "description": "`1`: also ask the model for a live round trip",
                    "schema": {"type": "string"}}],
    "responses": {code: {"description": description, "content": {"application/json": {
        "schema": {**_REPORT, "properties": {**_REPORT["properties"], "status": {
            "const": status}}}}}}
                  for code, status, description in (
                      ("200", "ok", "every check passed"),
                      ("503", "fail", "a check failed: `problems` says which"))}})
