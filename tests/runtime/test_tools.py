"""The tool execution API: a declared tool runs for an allowed signed caller with validated
arguments and is recorded; an unknown tool, a caller without the right, shell-shaped
arguments and a tool past its timeout are each refused or stopped with a clear answer, and
nothing else runs (a marker file shows what ran)."""

from __future__ import annotations

import contextlib
import json
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bus import replay
from fleet.node.tools import records
from fleet.node.tools.run import MAX_OUTPUT, SUPERVISOR
from fleet.node.tools.supervise import decode
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
          required: [text]
          additionalProperties: false
          properties:
            text: {type: string, maxLength: 200}
            api_token: {type: string, maxLength: 200, default: none}
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
      pair:
        command: [printf, "%s|%s", "{first}", "{second}"]
        args:
          type: object
          required: [second]
          properties:
            first: {type: string, maxLength: 20, default: unset}
            second: {type: string, maxLength: 20}
        callers: [ezra]
      number:
        command: [echo, "{n}"]
        args:
          type: object
          required: [n]
          properties:
            n: {type: integer}
        callers: [ezra]
      nested:
        handler: tests.runtime.tool_handlers:echo_args
        args:
          type: object
          additionalProperties: false
          properties:
            ratio: {type: number, exclusiveMaximum: 1}
            size: {anyOf: [{type: integer, minimum: 0}, {type: string, enum: [small, big]}]}
            options:
              type: object
              additionalProperties: false
              properties:
                depth: {type: integer, minimum: 0, maximum: 5}
                label: {type: string, maxLength: 20}
        callers: [ezra]
      count:
        command: [sh, -c, "echo ran >> runs.txt"]
        callers: [ezra]
      tree:
        command: [sh, -c, "setsid sleep 8 & sleep 30 &
                          setsid sh -c 'echo $$ > escaped.pid; exec sleep 60' >/dev/null 2>&1 &
                          until [ -s escaped.pid ]; do sleep 0.01; done; wait"]
        timeout: 2
        callers: [ezra]
      leaves:
        command: [sh, -c, "setsid sh -c 'echo $$ > left.pid; exec sleep 60' >/dev/null 2>&1 &
                          until [ -s left.pid ]; do sleep 0.01; done"]
        callers: [ezra]
      flood:
        command: [head, -c, "104857600", /dev/zero]
        callers: [ezra]
      missing:
        command: [no-such-command-anywhere]
        callers: [ezra]
      say:
        command: [echo, "{text}"]
        args: {type: object, required: [text], properties: {text: {type: string}}}
        callers: [ezra]
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
    assert answer["error"] == ("tool 'sleepy' ran past its timeout of 1 s and was stopped "
                               "(with every process it started)")
    assert answer["timed_out"] is True and answer["exit"] is None
    assert not (state(app) / "late").exists()
    assert calls(client)[0]["outcome"] == "timeout"


def test_tool_api_is_in_openapi_and_lists_no_commands(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert {"/tools", "/tool-calls", "/tools/{name}"} <= set(document["paths"])
    listed = client.get("/tools").get_json()["tools"]
    assert [tool["name"] for tool in listed][:5] == ["touch", "echo", "sleepy", "words",
                                                     "private"]
    assert "command" not in json.dumps(listed)


def test_registry_names_a_bad_tool_with_the_fix(tmp_path: Path) -> None:
    from fleet.core.errors import RegistryError
    from fleet.core.registry import parse_registry

    text = ("wizards:\n  a:\n    host: 127.0.0.1\n    role: worker\n    model: m\n"
            "    tools:\n      t:\n        command: 'rm -rf {path}'\n")
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, tmp_path / "registry.yaml")
    assert caught.value.problems == [
        f"{tmp_path / 'registry.yaml'}:7: wizards.a.tools: t: command 'rm -rf {{path}}' is "
        "not a non-empty list of arguments (argv, never a shell line), e.g. [wc, -w, '{path}']"]


def signed_call(caller: str, tool: str, body: Any) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, signed_headers(caller, raw, path=f"/tools/{tool}")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_long_arguments_are_recorded_whole_and_the_record_stays_readable(
        client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "echo", {"args": {"text": "a" * 3000}})
    assert status == 400 and set(answer["problems"]) == {"text"}
    [entry] = calls(client)
    assert entry["args"] == {"text": "a" * 3000} and entry["outcome"] == "refused"
    assert entry["status"] == 400


def test_a_negative_number_is_refused_as_an_option(app: Flask, client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "number", {"args": {"n": -1}})
    assert status == 400, answer
    assert answer["problems"] == {"n": "'-1' starts with '-' (it would read as an option)"}
    status, answer = call(client, "ezra", "number", {"args": {"n": 7}})
    assert (status, answer["stdout"]) == (200, "7\n")


def test_an_omitted_optional_argument_takes_its_default_place(client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "pair", {"args": {"second": "B"}})
    assert (status, answer["stdout"]) == (200, "unset|B"), answer
    status, answer = call(client, "ezra", "pair", {"args": {"first": "A", "second": "B"}})
    assert (status, answer["stdout"]) == (200, "A|B"), answer


def test_the_whole_process_tree_is_killed_at_the_timeout(app: Flask,
                                                        client: FlaskClient) -> None:
    started = time.monotonic()
    status, answer = call(client, "ezra", "tree", {"args": {}})
    took = time.monotonic() - started
    assert status == 504 and answer["timed_out"] is True, answer
    assert took < 6, f"the call was held {took:.1f} s by a process that left the group"
    escaped = int((state(app) / "escaped.pid").read_text())
    assert not alive(escaped), "a setsid grandchild outlived the timeout"


def test_what_a_tool_leaves_running_is_killed_when_it_exits(app: Flask,
                                                            client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "leaves", {"args": {}})
    assert status == 200 and answer["exit"] == 0, answer
    left = int((state(app) / "left.pid").read_text())
    assert not alive(left)


def test_output_is_bounded_while_it_is_read(client: FlaskClient) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, answer = call(client, "ezra", "flood", {"args": {}})
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 30, f"the gateway grew {grown_mib:.0f} MiB reading 100 MiB of output"
    assert status == 200, answer
    assert len(answer["stdout"]) == 64 * 1024 and answer["stdout_bytes"] == 100 * 1024 * 1024


def test_the_supervisor_keeps_its_memory_bounded_while_it_reads_100_mib(
        tmp_path: Path) -> None:
    """The reading happens in the supervisor process: its own peak memory (``VmHWM`` of its
    ``/proc`` status, read by the tool once it has written 100 MiB to each output) stays
    small. (Its ``wait4`` rusage would count the test process it was forked from.)"""
    peak = tmp_path / "peak"
    flood = ("head -c 104857600 /dev/zero; head -c 104857600 /dev/zero >&2; "
             f"grep VmHWM /proc/$PPID/status > {peak}")
    done = subprocess.run([sys.executable, "-I", "-S", SUPERVISOR, "30", str(MAX_OUTPUT), "--",
                           "/bin/sh", "-c", flood], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60, check=True)
    decoded = decode(done.stdout)
    assert (decoded.exit, decoded.stdout_bytes, decoded.stderr_bytes) == (
        0, 100 * 1024 * 1024, 100 * 1024 * 1024)
    assert len(decoded.stdout) == MAX_OUTPUT and len(decoded.stderr) == MAX_OUTPUT
    name, kib, unit = peak.read_text().split()
    assert (name, unit) == ("VmHWM:", "kB")
    assert int(kib) < 30 * 1024, f"the supervisor peaked at {kib} KiB reading 200 MiB"


def test_a_replayed_call_is_refused_and_runs_once(app: Flask, client: FlaskClient) -> None:
    raw, headers = signed_call("ezra", "count", {"args": {}})
    first = client.post("/tools/count", data=raw, headers=headers)
    replay = client.post("/tools/count", data=raw, headers=headers)
    assert first.status_code == 200, first.get_json()
    assert replay.status_code == 409, replay.get_json()
    assert replay.get_json()["error"].endswith("(call #1); a replayed call is refused")
    assert (state(app) / "runs.txt").read_text() == "ran\n"
    again, answer = call(client, "ezra", "count", {"args": {}, "id": "count-1"})
    assert again == 200, answer
    again, answer = call(client, "ezra", "count", {"args": {}, "id": "count-1"})
    assert again == 409, answer
    assert (state(app) / "runs.txt").read_text() == "ran\nran\n"
    assert [(c["outcome"], c["status"]) for c in calls(client)] == [
        ("refused", 409), ("ok", 200), ("refused", 409), ("ok", 200)]


@pytest.mark.parametrize(("args", "status", "problems"), [
    ({"ratio": 0.5, "size": "big", "options": {"depth": 2}}, 200, None),
    ({"ratio": 1}, 400, {"ratio": "1 is greater than or equal to the maximum of 1"}),
    ({"size": "huge"}, 400, {"size": "'huge' is not valid under any of the given schemas"}),
    ({"options": {"depth": 9}}, 400, {"options.depth": "9 is greater than the maximum of 5"}),
    ({"options": {"label": "a;b"}}, 400, {
        "options.label": "'a;b' looks like shell syntax (no ; | & $ ` < > ( ) quotes, globs "
                         "or control characters)"}),
])
def test_declared_schemas_are_json_schema(client: FlaskClient, args: dict[str, Any],
                                          status: int, problems: dict[str, str] | None) -> None:
    got, answer = call(client, "ezra", "nested", {"args": args})
    assert got == status, answer
    if problems is None:
        assert json.loads(answer["stdout"]) == args
    else:
        assert answer["problems"] == problems
    assert calls(client)[0]["status"] == status


def test_unsigned_oversized_and_malformed_calls_are_recorded(client: FlaskClient) -> None:
    assert client.post("/tools/touch", json={"args": {"name": "x"}}).status_code == 401
    big = json.dumps({"args": {"name": "x" * 300_000}}).encode()
    assert client.post("/tools/touch", data=big, headers=signed_headers(
        "ezra", big, path="/tools/touch")).status_code == 413
    raw = b"{not json"
    assert client.post("/tools/touch", data=raw, headers=signed_headers(
        "ezra", raw, path="/tools/touch")).status_code == 400
    recorded = [(c["caller"], c["tool"], c["outcome"], c["status"], c["args"])
                for c in calls(client)]
    assert recorded == [("ezra", "touch", "refused", 400, None),
                        ("ezra", "touch", "refused", 413, None),
                        (None, "touch", "refused", 401, None)]


def test_an_oversized_call_names_its_signer_only_when_the_headers_verify(
        client: FlaskClient) -> None:
    big = json.dumps({"args": {"name": "x" * 300_000}}).encode()
    forged = signed_headers("ezra", big, path="/tools/touch")
    forged["Signature"] = forged["Signature"][:-6] + "AAAAA:"
    undigested = {name: value for name, value in signed_headers(
        "ezra", big, path="/tools/touch").items() if name != "Content-Digest"}
    for headers in (forged, undigested):
        assert client.post("/tools/touch", data=big, headers=headers).status_code == 413
    assert [c["caller"] for c in calls(client)] == [None, None]


def test_an_over_long_argument_is_refused_and_a_command_that_cannot_run_is_an_error(
        client: FlaskClient) -> None:
    status, answer = call(client, "ezra", "say", {"args": {"text": "a" * 200_000}})
    assert status == 400, answer
    assert answer["problems"]["text"] == "is 200000 characters long; an argument is at most 4096"
    status, answer = call(client, "ezra", "missing", {"args": {}})
    assert status == 503, answer
    assert answer["error"] == ("tool 'missing' could not run: cannot run "
                               "'no-such-command-anywhere': No such file or directory")
    assert (calls(client)[0]["outcome"], calls(client)[0]["status"]) == ("error", 503)


def request_in_inbox(client: FlaskClient, sender: str, message_id: str) -> None:
    """Deliver a signed request from ``sender`` into bezalel's inbox."""
    body = json.dumps({"id": message_id, "from": sender, "to": "bezalel", "type": "request",
                       "payload": {"prompt": "touch it"},
                       "timestamp": "2026-01-01T00:00:00.000Z"}).encode()
    stored = client.post("/message", data=body, headers=signed_headers(sender, body))
    assert stored.status_code == 201, stored.get_json()


def test_a_call_on_behalf_of_a_request_needs_an_allowed_requester(
        app: Flask, client: FlaskClient) -> None:
    request_in_inbox(client, "allegro", "ask-1")
    request_in_inbox(client, "ezra", "ask-2")
    status, answer = call(client, "bezalel", "touch", {
        "args": {"name": "for-allegro"}, "on_behalf_of": {"from": "allegro", "id": "ask-1"}})
    assert status == 403, answer
    assert answer["error"] == ("'allegro' may not call tool 'touch' (allowed: bezalel, ezra), "
                               "so 'bezalel' may not call it for them")
    assert not (state(app) / "for-allegro").exists()
    status, answer = call(client, "bezalel", "touch", {
        "args": {"name": "for-ezra"}, "on_behalf_of": {"from": "ezra", "id": "ask-2"}})
    assert status == 200, answer
    status, answer = call(client, "bezalel", "touch", {
        "args": {"name": "for-nobody"}, "on_behalf_of": {"from": "ezra", "id": "ask-9"}})
    assert status == 403 and answer["error"].startswith("there is no unanswered request 'ask-9'")
    status, answer = call(client, "ezra", "touch", {
        "args": {"name": "relayed"}, "on_behalf_of": {"from": "ezra", "id": "ask-2"}})
    assert status == 403 and answer["error"].startswith("only 'bezalel' itself (its runtime)")
    recorded = [(c["caller"], c["on_behalf_of"], c["request_id"], c["outcome"])
                for c in calls(client)]
    assert recorded == [("ezra", "ezra", "ask-2", "refused"),
                        ("bezalel", "ezra", "ask-9", "refused"),
                        ("bezalel", "ezra", "ask-2", "ok"),
                        ("bezalel", "allegro", "ask-1", "refused")]


def test_registry_refuses_invalid_schemas_and_optional_placeholders(tmp_path: Path) -> None:
    from fleet.core.errors import RegistryError
    from fleet.core.registry import parse_registry

    text = ("wizards:\n  a:\n    host: 127.0.0.1\n    role: worker\n    model: m\n"
            "    tools:\n"
            "      t:\n        command: [ls, '{path}']\n"
            "        args: {type: object, properties: {path: {type: strin}}}\n"
            "      u:\n        command: [cp, '{src}', '{dst}']\n"
            "        args: {type: object, required: [dst], properties: {src: {type: string},"
            " dst: {type: string}}}\n")
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, tmp_path / "registry.yaml")
    where = f"{tmp_path / 'registry.yaml'}:7: wizards.a.tools"
    assert caught.value.problems == [
        f"{where}: t: args is not a valid JSON Schema (Draft 2020-12): 'strin' is not valid "
        "under any of the given schemas at args.properties.path.type",
        f"{where}: u: command element '{{src}}': argument 'src' is optional and has no default "
        "(an omitted value would shift the next argument into its place); add it to "
        "args.required or give it a `default`"]


def test_a_record_an_earlier_release_cut_short_moves_over_and_stays_readable(
        app: Flask, client: FlaskClient) -> None:
    old = sqlite3.connect(state(app) / "tools.sqlite3")
    old.execute("CREATE TABLE calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
                " caller TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,"
                " outcome TEXT NOT NULL, exit INTEGER, duration_ms REAL)")
    cut = json.dumps({"text": "a" * 3000})[:2000]
    old.execute("INSERT INTO calls (at, caller, tool, args, outcome, exit, duration_ms)"
                " VALUES (1, 'ezra', 'echo', ?, 'refused: bad arguments', NULL, NULL)", (cut,))
    old.commit()
    old.close()
    status, _ = call(client, "ezra", "touch", {"args": {"name": "after"}})
    assert status == 200
    newest, moved = calls(client)
    assert (moved["seq"], moved["caller"], moved["args"], moved["outcome"]) == (
        1, "ezra", cut, "refused: bad arguments")
    assert (newest["seq"], newest["args"]) == (2, {"name": "after"})


def test_the_record_keeps_the_newest_calls_and_ids_for_a_day(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "KEEP_CALLS", 150)
    now = time.time()
    old_claim = records.claim(tmp_path, "ezra", "old-id", "count")
    monkeypatch.setattr(records.time, "time", lambda: now + replay.KEEP_IDS_S + 1)
    for n in range(2, 201):
        records.record(tmp_path, "count", caller="ezra", error=f"call {n}")
    with contextlib.closing(sqlite3.connect(tmp_path / records.STORE)) as db:
        kept = [seq for (seq,) in db.execute("SELECT seq FROM tool_calls ORDER BY seq")]
        ids = db.execute("SELECT caller, id FROM call_ids").fetchall()
    assert old_claim == 1 and kept == list(range(51, 201))  # pruned at call 200
    assert ids == []  # a day on, the old id may be used again
    assert records.claim(tmp_path, "ezra", "old-id", "count") == 201
    with pytest.raises(replay.ReplayError):
        records.claim(tmp_path, "ezra", "old-id", "count")
