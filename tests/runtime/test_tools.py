"""The tool execution API: a declared tool runs for an allowed signed caller with validated
arguments and is recorded; an unknown tool, a caller without the right, shell-shaped
arguments and a tool past its timeout are each refused or stopped with a clear answer, and
nothing else runs (a marker file shows what ran)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.bus.conftest import bezalel_app, signed_headers

REGISTRY = """\
wizards:
  ezra:
    host: 127.0.0.1
    role: orchestrator
    model: test/m
    gateway_port: 18001
  bezalel:
    host: 127.0.0.1
    role: worker
    model: test/m
    gateway_port: 18002
    tools:
      touch:
        description: Create a file in the state dir.
        command: [touch, "{name}"]
        args:
          type: object
          required: [name]
          additionalProperties: false
          properties:
            name: {type: string, pattern: "^[a-z0-9._-]{1,40}$", maxLength: 40}
        timeout: 5
        callers: [ezra]
      echo:
        command: [echo, "{text}", "{api_token}"]
        args:
          type: object
          additionalProperties: false
          properties:
            text: {type: string, maxLength: 200}
            api_token: {type: string, maxLength: 200}
        callers: [ezra]
      sleepy:
        command: [{python}, -c, "import time; time.sleep(30); open('late', 'w')"]
        timeout: 1
        callers: [ezra]
      words:
        handler: tests.runtime.tool_handlers:count_words
        args:
          type: object
          required: [text]
          properties:
            text: {type: string, maxLength: 1000}
      private:
        command: [touch, private-ran]
  allegro:
    host: 127.0.0.1
    role: worker
    model: test/m
    gateway_port: 18003
"""


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.replace("{python}", sys.executable))
    return bezalel_app(registry, tmp_path / "state")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def call(client: FlaskClient, caller: str, tool: str, body: Any) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(body).encode()
    path = f"/tools/{tool}"
    answer = client.post(path, data=raw, headers=signed_headers(caller, raw, path=path))
    return answer.status_code, answer.get_json()


def calls(client: FlaskClient) -> list[dict[str, Any]]:
    headers = signed_headers("bezalel", b"", path="/tool-calls", method="GET",
                             content_type=None)
    answer = client.get("/tool-calls", headers=headers)
    assert answer.status_code == 200
    found: list[dict[str, Any]] = answer.get_json()["calls"]
    return found


def state(app: Flask) -> Path:
    return Path(app.config["STATE_DIR"])


def test_allowed_tool_runs_with_validated_arguments_and_is_recorded(
        app: Flask, client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "touch", {"args": {"name": "made-by-ezra"}})
    assert status == 200, answer
    assert answer["exit"] == 0 and answer["timed_out"] is False
    assert (state(app) / "made-by-ezra").is_file()
    [entry] = calls(client)
    assert (entry["caller"], entry["tool"], entry["args"], entry["outcome"], entry["exit"]) == (
        "ezra", "touch", {"name": "made-by-ezra"}, "ok", 0)
    assert entry["duration_ms"] >= 0


def test_secret_looking_arguments_are_masked_in_the_record(client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "echo",
                          {"args": {"text": "hello", "api_token": "tok-123456789"}})
    assert status == 200 and answer["stdout"] == "hello tok-123456789\n"
    assert calls(client)[0]["args"] == {"text": "hello", "api_token": "***"}


def test_python_handler_runs_for_the_agent_itself(client: FlaskClient) -> None:
    status, answer = call(client, "bezalel", "words", {"args": {"text": "one two three"}})
    assert status == 200, answer
    assert json.loads(answer["stdout"]) == {"words": 3}


@pytest.mark.parametrize(("caller", "tool", "body", "status", "error"), [
    ("ezra", "format-disk", {"args": {}}, 404, "no tool 'format-disk' on bezalel"),
    ("allegro", "touch", {"args": {"name": "x"}}, 403,
     "'allegro' may not call tool 'touch' (allowed: bezalel, ezra)"),
    ("ezra", "private", {"args": {}}, 403, "'ezra' may not call tool 'private'"),
    ("ezra", "touch", {"args": {"name": "x; rm -rf /"}}, 400,
     "invalid arguments for tool 'touch'"),
    ("ezra", "echo", {"args": {"text": "$(touch pwned)"}}, 400,
     "invalid arguments for tool 'echo'"),
    ("ezra", "echo", {"args": {"text": "--help"}}, 400, "invalid arguments for tool 'echo'"),
    ("ezra", "touch", {"args": {"name": "x", "extra": "y"}}, 400,
     "invalid arguments for tool 'touch'"),
])
def test_refused_calls_get_a_clear_answer_and_run_nothing(
        app: Flask, client: FlaskClient, caller: str, tool: str, body: Any, status: int,
        error: str) -> None:
    before = sorted(p.name for p in state(app).iterdir())
    got, answer = call(client, caller, tool, body)
    assert got == status, answer
    assert answer["error"].startswith(error), answer
    after = sorted(p.name for p in state(app).iterdir())
    assert all(name.startswith("tools.sqlite3") for name in set(after) - set(before)), after
    assert calls(client)[0]["outcome"].startswith("refused")


def test_unsigned_caller_is_refused(client: FlaskClient) -> None:
    answer = client.post("/tools/touch", json={"args": {"name": "x"}})
    assert answer.status_code == 401


def test_tool_past_its_timeout_is_stopped(app: Flask, client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "sleepy", {"args": {}})
    assert status == 504, answer
    assert answer["error"] == "tool 'sleepy' ran past its timeout of 1 s and was stopped"
    assert answer["timed_out"] is True and answer["exit"] is None
    assert not (state(app) / "late").exists()
    assert calls(client)[0]["outcome"] == "timeout"


def test_tool_api_is_in_openapi_and_lists_no_commands(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert {"/tools", "/tool-calls", "/tools/{name}"} <= set(document["paths"])
    listed = client.get("/tools").get_json()["tools"]
    assert [tool["name"] for tool in listed] == ["touch", "echo", "sleepy", "words", "private"]
    assert "command" not in json.dumps(listed)


def test_registry_names_a_bad_tool_with_the_fix(tmp_path: Path) -> None:
    from fleet.errors import RegistryError
    from fleet.registry import parse_registry

    text = ("wizards:\n  a:\n    host: 127.0.0.1\n    role: worker\n    model: m\n"
            "    tools:\n      t:\n        command: 'rm -rf {path}'\n")
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, tmp_path / "registry.yaml")
    assert caught.value.problems == [
        f"{tmp_path / 'registry.yaml'}:7: wizards.a.tools: t: command 'rm -rf {{path}}' is "
        "not a non-empty list of arguments (argv, never a shell line), e.g. [wc, -w, '{path}']"]
