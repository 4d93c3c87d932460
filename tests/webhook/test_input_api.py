"""Hostile input to the read API: numbers that are not ASCII digits or out of range are 400s
naming the parameter, never 500s."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from tests.webhook.conftest import auth
from tests.webhook.forge import signed_push

RUN_ID_RANGE = "is not a number from 1 to 9223372036854775807"


@pytest.mark.parametrize("run_id", [
    "9223372036854775808",  # one over SQLite's INTEGER: OverflowError
    "99999999999999999999999999",
    "0",
    "-1",
    "²",  # str.isdigit() is True, int() refuses it
    "\u0663",  # ARABIC-INDIC DIGIT THREE: \d and int() take it
    "1.0",
    "0x1",
    "1 ",
    "abc",
])
def test_a_run_id_that_is_not_a_number_in_range_is_400(client: FlaskClient, run_id: str) -> None:
    response = client.get(f"/runs/{quote(run_id)}", headers=auth())
    assert response.status_code == 400
    assert response.json == {"error": f"run_id {run_id!r} {RUN_ID_RANGE}"}


def test_a_run_id_of_20000_digits_is_400_and_shortened(client: FlaskClient) -> None:
    response = client.get("/runs/" + "9" * 20_000, headers=auth())
    assert response.status_code == 400
    assert response.json == {"error": f"run_id '{'9' * 40}...' {RUN_ID_RANGE}"}


def test_the_largest_run_id_is_a_404_not_an_error(client: FlaskClient) -> None:
    response = client.get("/runs/9223372036854775807", headers=auth())
    assert response.status_code == 404
    assert response.json == {"error": "run 9223372036854775807 doesn't exist"}


def test_a_run_id_with_leading_zeros_is_that_run(client: FlaskClient) -> None:
    body, headers = signed_push("gitea", "refs/tags/PROD", "a" * 40)
    assert client.post("/hooks/gitea", data=body, headers=headers).status_code == 202
    response = client.get("/runs/0001", headers=auth())
    assert response.status_code == 200
    assert response.get_json()["id"] == 1


@pytest.mark.parametrize("limit", ["²", "\u0661", "10\n", " 10", "+10", "1e2", "501",
                                   "9223372036854775808", "9" * 5000, ""])
def test_a_limit_that_is_not_a_number_in_range_is_400(client: FlaskClient, limit: str) -> None:
    response = client.get(f"/runs?limit={quote(limit)}", headers=auth())
    assert response.status_code == 400
    shown = limit if len(limit) <= 40 else limit[:40] + "..."
    assert response.json == {"error": f"limit {shown!r} is not a number from 1 to 500"}


def test_the_read_token_is_checked_before_the_run_id(client: FlaskClient) -> None:
    response = client.get("/runs/9223372036854775808")
    assert response.status_code == 401


def test_an_empty_status_filter_is_refused(client: FlaskClient) -> None:
    answer = client.get("/runs?status=", headers=auth())
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith("status '' is not one of queued, running")
