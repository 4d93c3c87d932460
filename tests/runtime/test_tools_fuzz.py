"""Schemathesis fuzzing of the tool API from the gateway's own ``/openapi.json``: every
generated call, valid or not, gets no server error and an answer the document allows. Each
declared tool is its own operation with its argument schema (JSON Schema: ``number``,
``anyOf``, nested objects, ``exclusiveMaximum``), so generated arguments reach the checks.
Requests marked by the auth provider are signed in a WSGI middleware over the exact bytes
the app receives (as the allowed caller ezra, or as bezalel for its own call record)."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from tests.bus.conftest import bezalel_app, signed_headers
from tests.runtime.test_tools import REGISTRY
from tests.signed_fuzz import SignInTheMiddleware, signing

pytestmark = pytest.mark.slow
FOLDER = Path(tempfile.mkdtemp(prefix="tools-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
SLOW_OR_BROKEN = ("sleepy", "tree", "leaves", "flood", "missing")  # 504/503 by design
FLEET = yaml.safe_load(REGISTRY.replace("{python}", sys.executable))
for _name in SLOW_OR_BROKEN:
    del FLEET["wizards"]["bezalel"]["tools"][_name]
(FOLDER / "registry.yaml").write_text(yaml.safe_dump(FLEET))
APP = bezalel_app(FOLDER / "registry.yaml", FOLDER / "state",
                  BUS_MAX_WAIT_MS=50)  # long polls: fuzzed waits stay short


def signed_as_caller(environ: dict[str, Any], body: bytes) -> dict[str, str]:
    """Signature headers: as the allowed caller ezra, or as bezalel for its own call
    record."""
    path = environ["RAW_URI"].partition("?")[0]
    agent = "bezalel" if path == "/tool-calls" else "ezra"
    return signed_headers(agent, body, path=path, method=environ["REQUEST_METHOD"],
                          query=environ.get("QUERY_STRING", ""), content_type=None,
                          host=environ["HTTP_HOST"])


schema = schemathesis.openapi.from_wsgi(
    "/openapi.json", signing(APP.wsgi_app, signed_as_caller)).include(path_regex="^/tool")
schema.auth(retry_on=[])(SignInTheMiddleware)


@schema.parametrize()
@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_tool_api(case: schemathesis.Case) -> None:
    # Arguments are described per tool only as an object: a schema-valid body may still be
    # refused (400: arguments the tool does not take, or shell-shaped values), so positive
    # data need not be accepted. 504 is the one 5xx: a tool past its timeout was stopped.
    response = case.call_and_validate(excluded_checks=[not_a_server_error,
                                                       positive_data_acceptance])
    assert response.status_code < 500 or response.status_code == 504, response.text
