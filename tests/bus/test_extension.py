"""The bus as a Flask extension (issue 9): ``Bus(app)`` on a plain Flask app, its state in
``app.extensions["bus"]``, a store layer without Flask, nothing imported from the gateway,
and one schema behind both validation and ``/openapi.json``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient

import bus
from bus import Bus
from bus.state import BusState
from fleet.core.registry import load_registry
from tests.bus.conftest import PUBLIC, dumps, message, rows, signed_headers
from tests.bus.test_api import call

BUS_DIR = Path(bus.__file__).parent


def imports(path: Path) -> set[str]:
    """Modules a source file imports (top level or not)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_bus_imports_nothing_from_the_gateway() -> None:
    for path in BUS_DIR.glob("*.py"):
        assert not {name for name in imports(path) if name.startswith("fleet.node.gateway")}, path


@pytest.mark.parametrize("module", ["store", "writer", "outbox", "schema", "signing", "keys"])
def test_store_layer_knows_no_flask(module: str) -> None:
    assert not {name for name in imports(BUS_DIR / f"{module}.py")
                if name.split(".")[0] in ("flask", "werkzeug")}


def test_bus_mounts_on_a_plain_flask_app(tmp_path: Path, registry_path: Path) -> None:
    app = Flask("plain")
    app.config.update(TESTING=True, BUS_WORKER=False)
    extension = Bus()
    state = extension.init_app(app, agents=load_registry(registry_path).agents, agent="bezalel",
                               keys=PUBLIC, state_dir=tmp_path / "plain")
    assert app.extensions["bus"] is state and isinstance(state, BusState)
    client = app.test_client()
    body = dumps(message(id="plain-1"))
    assert client.post("/message", data=body,
                       headers=signed_headers("ezra", body)).status_code == 201
    assert [m["id"] for m in call(client, "GET", "/messages").json["messages"]] == ["plain-1"]
    assert rows(tmp_path / "plain" / "bus.sqlite3", "SELECT id FROM inbox") == [("plain-1",)]


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The JSON request body schema of ``POST path``, with ``#/components`` resolvable."""
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"][
        "schema"]
    return {**schema, "components": document["components"]}


@pytest.mark.parametrize(("path", "body", "agent"), [
    ("/message", message(id=""), "ezra"),
    ("/message", message(colour="red"), "ezra"),
    ("/message", message(ttl=2**63), "ezra"),
    ("/message", message(to="allegro"), "ezra"),
    ("/messages/batch", {"messages": []}, "ezra"),
    ("/messages/batch", {"messages": [message()], "more": 1}, "ezra"),
    ("/outbox", {"type": "alert", "payload": 1, "to": "ezra", "colour": "red"}, "bezalel"),
    ("/outbox", {"type": "alert", "payload": 1}, "bezalel"),
    ("/outbox", {"type": "alert", "payload": 1, "to": "*"}, "bezalel"),
    ("/messages/ack", {"id": "x"}, "bezalel"),
])
def test_openapi_refuses_what_the_server_refuses(client: FlaskClient, path: str,
                                                 body: dict[str, Any], agent: str) -> None:
    document = client.get("/openapi.json").json
    assert document is not None
    validator = jsonschema.Draft202012Validator(body_schema(document, path))
    assert not validator.is_valid(body), f"{path}: /openapi.json accepts {body}"
    data = dumps(body)
    response = client.post(path, data=data, headers=signed_headers(agent, data, path=path))
    assert response.status_code == 400, response.json


@pytest.mark.parametrize(("path", "body", "agent", "status"), [
    # built at collection: a ttl that outlasts a loaded machine's run up to this test
    ("/message", message(id="ok-1", ttl=86400, correlation_id=None), "ezra", 201),
    ("/messages/batch", {"messages": [message(id="ok-2")]}, "ezra", 200),
    ("/outbox", {"type": "broadcast", "payload": [1], "to": "*"}, "bezalel", 202),
    ("/outbox", {"type": "request", "payload": None, "to": "ezra", "id": "o-1"}, "bezalel", 202),
])
def test_openapi_accepts_what_the_server_accepts(client: FlaskClient, path: str,
                                                 body: dict[str, Any], agent: str,
                                                 status: int) -> None:
    document = client.get("/openapi.json").json
    assert document is not None
    jsonschema.Draft202012Validator(body_schema(document, path)).validate(body)
    data = dumps(body)
    response = client.post(path, data=data, headers=signed_headers(agent, data, path=path))
    assert response.status_code == status, response.json
