"""Fuzz ``fleet dashboard`` from its own ``/openapi.json`` with schemathesis.

The app is the one ``fleet dashboard`` serves (:func:`fleet.core.serving.limited` in front of
``create_app()``), on the fleet of ``conftest.py`` (two agents, both down) with its run record
and one more under the document's example run id, so that ``/state.json`` lists agents and
runs and a run record is found. Every documented operation gets generated requests (valid and
invalid run ids, undocumented methods); each answer must be documented (status code, content
type, headers, schema) and none may be a server error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from fleet.core.serving import limited
from fleet.dashboard.app import create_app
from fleet.dashboard.openapi import RUN_ID
from tests.dashboard.conftest import RUN_ID as FIXTURE_RUN

pytestmark = pytest.mark.slow
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def closing(app: WSGIApp) -> WSGIApp:
    """``app`` whose answers are read whole and closed, as a WSGI server does (schemathesis
    leaves a static file's answer open)."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        answer = app(environ, start_response)
        try:
            return [b"".join(answer)]
        finally:
            if hasattr(answer, "close"):
                answer.close()

    return middleware


@pytest.fixture
def api_schema(fleet_dir: Path) -> Any:
    """The dashboard's OpenAPI document, loaded from the app it describes."""
    records = fleet_dir / "records"
    example = RUN_ID["example"]
    record = json.loads((records / f"{FIXTURE_RUN}.json").read_text())
    (records / f"{example}.json").write_text(json.dumps({**record, "run_id": example}))
    app = limited(create_app({"REGISTRY_PATH": str(fleet_dir / "registry.yaml"),
                              "RECORDS_DIR": str(records),
                              "REFRESH_S": 3600.0}))  # one probe of the fleet, then cached
    return schemathesis.openapi.from_wsgi("/openapi.json", closing(app))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=100, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_server_error(case: Any) -> None:
    case.call_and_validate()
