"""Schemathesis fuzzing of the work API from the orchestrator gateway's own
``/openapi.json``: every generated call, valid or not, gets no server error and an answer the
document allows. Requests marked by the auth provider are signed as the operator in a WSGI
middleware over the exact bytes the app receives; others pass unsigned and must get 401."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bus.keys import OPERATOR
from tests.bus.conftest import write_registry
from tests.signed_fuzz import SignInTheMiddleware, signed_as, signing
from tests.work.items_gateway import failed, gateway_app, issue, proposed

pytestmark = pytest.mark.slow
FOLDER = Path(tempfile.mkdtemp(prefix="work-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
APP = gateway_app(write_registry(FOLDER), FOLDER / "state")
for _number in range(1, 4):
    issue(FOLDER / "state", _number)
failed(FOLDER / "state", 4)
proposed(FOLDER / "state", 5)



schema = schemathesis.openapi.from_wsgi(
    "/openapi.json", signing(APP.wsgi_app, signed_as(OPERATOR))).include(path_regex="^/work")
schema.auth(retry_on=[])(SignInTheMiddleware)


@schema.parametrize()
@settings(max_examples=80, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_work_api(case: schemathesis.Case) -> None:
    case.call_and_validate()
