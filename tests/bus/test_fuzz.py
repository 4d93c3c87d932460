"""Schemathesis fuzzing of the bus from its own ``/openapi.json`` (issue 9): every generated
request, valid or not, gets no server error and an answer the document allows.

Schemathesis marks a request to be signed (an auth provider sets ``Signature:
sign-me``); a WSGI middleware in front of the app then signs it over the exact bytes the app
receives: as the message's ``from`` when the body names an agent, else as the gateway's own
agent, so generated bodies reach validation instead of stopping at 401. Requests with other
(generated, invalid or missing) auth headers pass unsigned and must get 401. Deterministic
(``derandomize``), a fixed number of examples per operation.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bus.keys import signing_key
from bus.signing import sign
from tests.bus.conftest import KEYS, bezalel_app, write_registry
from tests.signed_fuzz import SignInTheMiddleware, signing

pytestmark = pytest.mark.slow
FOLDER = Path(tempfile.mkdtemp(prefix="bus-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
APP = bezalel_app(write_registry(FOLDER), FOLDER / "state",
                  BUS_MAX_WAIT_MS=50)  # long polls: fuzzed waits stay short


def signed_as_sender(environ: dict[str, Any], body: bytes) -> dict[str, str]:
    """Signature headers: as the message's ``from`` when the body names an agent, else as
    the gateway's own agent."""
    agent = "bezalel"
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if environ["PATH_INFO"] == "/messages/batch" and isinstance(data, dict):
        items = data.get("messages")
        data = items[0] if isinstance(items, list) and items else None
    if environ["PATH_INFO"] in ("/message", "/messages/batch") and isinstance(
            data, dict) and isinstance(data.get("from"), str) and data["from"] in KEYS:
        agent = data["from"]
    query = environ.get("QUERY_STRING", "")
    url = f"http://{environ['HTTP_HOST']}{environ['RAW_URI'].partition('?')[0]}" + (
        f"?{query}" if query else "")
    return sign(signing_key(agent, KEYS[agent]), environ["REQUEST_METHOD"], url, body)


schema = schemathesis.openapi.from_wsgi(
    "/openapi.json", signing(APP.wsgi_app, signed_as_sender)).exclude(
    path_regex="^/(health|\\.well-known)")  # the gateway's own routes, not the bus
schema.auth(retry_on=[])(SignInTheMiddleware)


@schema.parametrize()
@settings(max_examples=100, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_bus_api(case: schemathesis.Case) -> None:
    case.call_and_validate()


(FOLDER / "soul.md").write_text("# bezalel\n")
(FOLDER / "config.json").write_text("{}\n")
HEALTHY = bezalel_app(write_registry(FOLDER), FOLDER / "healthy", SOUL=str(
    FOLDER / "soul.md"), CONFIG=str(FOLDER / "config.json"))  # /health: 200, not 503
gateway_routes = schemathesis.openapi.from_wsgi("/openapi.json", HEALTHY).include(
    path_regex="^/(health|\\.well-known)")  # the gateway's own public routes


@gateway_routes.parametrize()
@settings(max_examples=50, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_gateway_routes(case: schemathesis.Case) -> None:
    """``/health`` (its ``roundtrip`` query too) and the agent card of a healthy agent:
    documented answers only, none a server error (not even ``/health``'s documented 503)."""
    case.call_and_validate()
