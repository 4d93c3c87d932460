"""Conversation memory of the built-in runtime: earlier turns reach the model in order, within
the bounds, scoped by sender; a turn is stored once and a request handled again is answered
from it; the operator's memory API and ``fleet memory``; conversation ids are checked whole."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.client import BusClient
from bus.keys import OPERATOR, PRIVATE_KEY_ENV
from fleet.cli import main
from fleet.cli.ask import checked_id
from fleet.cli.memory import checked_peer
from fleet.core.registry import NAME_RE, load_registry
from fleet.core.runtime_config import MemorySettings
from fleet.node.provider import Provider
from fleet.node.runtime.loop import MAX_PROMPT_CHARS, Runtime, response_id
from fleet.node.runtime.memory import (
    MAX_CONVERSATION,
    conversation_of,
    is_conversation,
    store_turn,
    turns,
)
from fleet.node.runtime.state import read_state
from tests.bus.conftest import Gateway, bezalel_app, signed_headers, write_operator_secrets
from tests.runtime.conftest import KEYS, MockProvider, write_registry
from tests.runtime.test_runtime import responses, runtime_of, settled_bus
from tests.waiting import wait_for

SOUL = {"role": "system", "content": "You are bezalel. Answer briefly.\n"}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def asked_about(provider: MockProvider, prompt: str) -> list[list[dict[str, Any]]]:
    """The messages of every model call whose last message is the prompt ``prompt``."""
    return [body["messages"] for body in provider.requests
            if body["messages"][-1] == user(prompt)]


def fleet_cli(registry: Path, *args: str, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                           "--registry", str(registry), *args], capture_output=True, text=True,
                          timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.getcwd(),
                               **(env or {})})


def test_a_conversation_sends_its_earlier_turns_in_order_to_its_sender_only(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        tmp_path: Path) -> None:
    """Five turns of ezra's conversation: each prompt goes with every earlier turn, oldest
    first. allegro naming the same conversation id starts its own; a one-off request sends no
    history; ``fleet memory`` lists, shows and forgets the conversation (operator's key)."""
    registry, gateways = fleet_pair
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    fleet = load_registry(registry)
    try:
        with BusClient.for_agent(fleet, "ezra", KEYS) as ezra, \
                BusClient.for_agent(fleet, "allegro", KEYS) as allegro:
            for number in range(1, 6):
                provider.reply = f"a{number}"
                answer = ezra.request("bezalel", {"prompt": f"q{number}", "conversation": "c1"},
                                      timeout=30)
                assert answer["payload"]["text"] == f"a{number}"
            provider.reply = "theirs"
            allegro.request("bezalel", {"prompt": "other", "conversation": "c1"}, timeout=30)
            provider.reply = "alone"
            ezra.request("bezalel", {"prompt": "solo"}, timeout=30)
            provider.reply = "a6"
            ezra.request("bezalel", {"messages": [user("q6")], "conversation": "c1"},
                         timeout=30)
    finally:
        runtime.stop.set()
        thread.join(10)
    for number in range(1, 7):
        earlier = [message for n in range(1, number)
                   for message in (user(f"q{n}"), assistant(f"a{n}"))]
        assert asked_about(provider, f"q{number}") == [[SOUL, *earlier, user(f"q{number}")]]
    assert asked_about(provider, "other") == [[SOUL, user("other")]]
    assert asked_about(provider, "solo") == [[SOUL, user("solo")]]
    stored = turns(gateways["bezalel"].state, "ezra", "c1")
    assert [(t["prompt"], t["answer"]) for t in stored] == [
        (f"q{n}", f"a{n}") for n in range(1, 7)]
    assert [t["answer"] for t in turns(gateways["bezalel"].state, "allegro", "c1")] == [
        "theirs"]

    env = {"FLEET_SECRETS": str(write_operator_secrets(tmp_path))}
    listed = fleet_cli(registry, "memory", "list", "bezalel", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith('ezra         "c1"  6 turn(s)  last '), lines
    assert lines[1].startswith('allegro      "c1"  1 turn(s)  last '), lines
    shown = fleet_cli(registry, "memory", "show", "bezalel", "c1", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1:3] == ["  ezra: q1", "  bezalel: a1"]
    assert len(shown.stdout.splitlines()) == 18
    forgot = fleet_cli(registry, "memory", "forget", "bezalel", "c1", "--peer", "allegro",
                       "--yes", env=env)
    assert forgot.stdout == "bezalel forgot 1 turn(s) of conversation 'c1' with allegro.\n"
    again = fleet_cli(registry, "memory", "forget", "bezalel", "c1", "--peer", "allegro",
                      "--yes", env=env)
    assert again.stdout == ("bezalel kept no turns of conversation 'c1' with allegro: nothing "
                            "to forget.\n")
    assert len(turns(gateways["bezalel"].state, "ezra", "c1")) == 6  # ezra's are kept
    bad = fleet_cli(registry, "memory", "show", "bezalel", "c\x7f1", env=env)
    assert bad.returncode == 2  # checked here, before anything is sent
    assert "Error: Invalid value for 'CONVERSATION': 'c\\x7f1' is not 1 to 128 " \
           "printable" in bad.stderr, bad.stderr
    unkeyed = fleet_cli(registry, "memory", "list", "bezalel",
                        env={"FLEET_AGENT": "bezalel", PRIVATE_KEY_ENV: KEYS["bezalel"]})
    assert unkeyed.returncode == 1
    assert unkeyed.stderr == ("Error: fleet memory needs the operator's key, and "
                              "$FLEET_SECRETS has none\nHint: Add identities.operator to the "
                              "secrets file (`fleet keys` makes one).\n")


@pytest.fixture
def alone(tmp_path: Path, provider: MockProvider) -> Runtime:
    """bezalel's runtime answering requests handed to it (no gateway: its inbox unused)."""
    return Runtime(agent="bezalel", inbox=None,  # type: ignore[arg-type]
                   provider=Provider(base_url=provider.url, key=provider.key, model="test/m"),
                   soul=lambda: "soul", state_dir=tmp_path, release="r")


def request(number: int, payload: Any, sender: str = "ezra", **fields: Any) -> dict[str, Any]:
    return {"id": f"req-{number}", "from": sender, "to": "bezalel", "type": "request",
            "payload": payload, "timestamp": datetime.now(UTC).isoformat(), **fields}


def converse(runtime: Runtime, provider: MockProvider, prompts: list[str],
             conversation: str = "c") -> None:
    for prompt in prompts:
        provider.reply = f"answer to {prompt}"
        found = runtime.answer(request(len(provider.requests) + 100, {
            "prompt": prompt, "conversation": conversation}))
        assert found is not None and found["text"] == f"answer to {prompt}", found


def test_history_is_the_newest_turns_that_fit_both_bounds(
        alone: Runtime, provider: MockProvider) -> None:
    alone.memory = MemorySettings(turns=3, max_chars=10_000)
    converse(alone, provider, ["p1", "p2", "p3", "p4", "p5", "p6"])
    assert provider.requests[-1]["messages"] == [
        {"role": "system", "content": "soul"},
        user("p3"), assistant("answer to p3"), user("p4"), assistant("answer to p4"),
        user("p5"), assistant("answer to p5"), user("p6")]
    one_turn = len("p6") + len("answer to p6")  # 14 characters a turn
    alone.memory = MemorySettings(turns=20, max_chars=2 * one_turn + 1)
    converse(alone, provider, ["p7"])
    assert provider.requests[-1]["messages"][1:] == [
        user("p5"), assistant("answer to p5"), user("p6"), assistant("answer to p6"),
        user("p7")]
    alone.memory = MemorySettings(turns=0)
    converse(alone, provider, ["p8"])
    assert provider.requests[-1]["messages"][1:] == [user("p8")]


def test_a_huge_prompt_is_cut_stored_once_and_left_out_of_a_bounded_history(
        alone: Runtime, provider: MockProvider, tmp_path: Path) -> None:
    huge = "x" * (MAX_PROMPT_CHARS + 500)
    converse(alone, provider, ["small"])
    provider.reply = "big answer"
    alone.answer(request(1, {"prompt": huge, "conversation": "c"}))
    assert len(provider.requests[-1]["messages"][-1]["content"]) == MAX_PROMPT_CHARS
    converse(alone, provider, ["next"])  # the huge turn passes max_chars 16000: none is sent
    assert provider.requests[-1]["messages"][1:] == [user("next")]
    assert [len(t["prompt"]) for t in turns(tmp_path, "ezra", "c")] == [5, MAX_PROMPT_CHARS, 4]


def test_turns_older_than_keep_days_are_deleted_when_a_turn_is_written(
        alone: Runtime, provider: MockProvider, tmp_path: Path) -> None:
    alone.memory = MemorySettings(keep_days=2)
    day = 86_400.0
    start = 1_000_000_000.0
    alone.now = lambda: start
    converse(alone, provider, ["old"])
    alone.now = lambda: start + 1.5 * day
    converse(alone, provider, ["newer"])
    assert provider.requests[-1]["messages"][1:] == [
        user("old"), assistant("answer to old"), user("newer")]
    alone.now = lambda: start + 2.5 * day
    assert [t["prompt"] for t in turns(tmp_path, "ezra", "c")] == ["old", "newer"]
    converse(alone, provider, ["newest"])  # "old" is past keep_days: not sent, and deleted
    assert provider.requests[-1]["messages"][1:] == [
        user("newer"), assistant("answer to newer"), user("newest")]
    assert [t["prompt"] for t in turns(tmp_path, "ezra", "c")] == ["newer", "newest"]


def test_a_request_handled_again_is_answered_from_its_stored_turn(
        alone: Runtime, provider: MockProvider, tmp_path: Path) -> None:
    """The same request twice (a replay, or a restart before the ack): one model call, one
    stored turn, the same payload both times, even once its ttl ran out."""
    provider.tokens = 7
    asked = request(1, {"prompt": "hi", "conversation": "c"}, ttl=60)
    first = alone.answer(asked)
    provider.reply = "something else"
    alone.now = lambda: datetime.now(UTC).timestamp() + 3600  # expired by now
    again = alone.answer(asked)
    assert again == first and first is not None and first["text"] == "four"
    assert first["tokens"] == 7
    assert len(provider.requests) == 1
    assert len(turns(tmp_path, "ezra", "c")) == 1
    theirs = alone.answer(request(1, {"prompt": "hi", "conversation": "c"}, sender="allegro",
                                  ttl=60))  # another sender's req-1: not ezra's turn
    assert theirs is not None and theirs["error"].startswith("request 'req-1' expired")


@pytest.mark.parametrize("conversation", [
    "", "x" * (MAX_CONVERSATION + 1), "a\nb", "tab\there", "\x00", "del\x7f", "c1\x85",
    "\ud800", "lone \udfff", "\u2028", "\u200b", 5, None, ["c"], True])
def test_a_bad_conversation_id_is_refused_naming_the_rule(
        alone: Runtime, provider: MockProvider, conversation: Any) -> None:
    found = alone.answer(request(1, {"prompt": "hi", "conversation": conversation}))
    assert found is not None
    assert found["error"].endswith(
        "is not a conversation id: send 1 to 128 printable characters (no control "
        "characters, no line breaks, no surrogates), or no conversation for a one-off "
        "request")
    assert provider.requests == []


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.text(max_size=200), st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1,
    max_size=130)))
def test_every_conversation_id_accepted_is_printable_short_and_free_of_controls(
        value: str) -> None:
    accepted = is_conversation(value)
    try:
        named = conversation_of({"conversation": value})
    except ValueError:
        named = None
    assert accepted == (named == value)
    if accepted:
        assert 1 <= len(value) <= MAX_CONVERSATION and value.isprintable()
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF
                       for c in value)
        value.encode("utf-8")  # storable: no lone surrogate
    else:
        assert not (1 <= len(value) <= MAX_CONVERSATION and value.isprintable())


def test_memory_settings_reach_the_runtime_from_the_registry(
        tmp_path: Path, provider: MockProvider) -> None:
    registry = write_registry(tmp_path, provider.url)
    text = registry.read_text().replace(
        "    capabilities: [code]\n    provider:\n",
        "    capabilities: [code]\n    config: {memory: {turns: 4, keep_days: 9}}\n"
        "    provider:\n", 1)
    registry.write_text(text)
    runtime = runtime_of(registry, tmp_path / "state", provider)
    assert runtime.memory == MemorySettings(turns=4, max_chars=16_000, keep_days=9)


# The kill -9 test: a real runtime process, killed once its turn is stored and before the ack


def runtime_process(registry: Path, state: Path, provider: MockProvider,
                    log: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.getcwd(), "FLEET_REGISTRY": str(registry),
           "FLEET_AGENT": "bezalel", PRIVATE_KEY_ENV: KEYS["bezalel"],
           "FLEET_STATE_DIR": str(state), "MOCK_API_KEY": provider.key,
           "FLEET_SOUL": str(registry.parent / "souls" / "bezalel.md")}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fleet.node.runtime"], env=env,
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                start_new_session=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def stored_rows(state: Path) -> list[tuple[Any, ...]]:
    path = state / "memory.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT peer, request_id, answer FROM turns ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def test_kill_9_after_the_model_answered_stores_the_turn_once_and_answers_once(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    """The runtime process asks the model; its gateway dies meanwhile, so the runtime stores
    the turn and cannot queue the response or acknowledge the request; it is killed (-9)
    then. Restarted with its gateway: one response, the stored answer, the model not asked
    again, the turn stored once."""
    registry, gateways = fleet_pair
    bezalel = gateways["bezalel"]
    log = tmp_path / "runtime.log"
    first = runtime_process(registry, bezalel.state, provider, log)
    processes.append(first)
    wait_for(lambda: (read_state(bezalel.state) or {}).get("state") == "ready",
             what=lambda: log.read_text())
    provider.hold = threading.Event()
    provider.reply = "remembered"
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"prompt": "keep me", "conversation": "k"},
                  id="req-k", correlation_id="c-k", reply_to="ezra")
        wait_for(lambda: asked_about(provider, "keep me"), what="the model to be asked")
        bezalel.kill()  # the response cannot be queued now, nor the request acknowledged
        provider.hold.set()
        wait_for(lambda: stored_rows(bezalel.state), what="the turn to be stored")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        assert responses(ezra, "c-k") == []
        provider.hold = None
        provider.reply = "asked again"
        bezalel.start()
        processes.append(runtime_process(registry, bezalel.state, provider, log))
        answer = wait_for(lambda: responses(ezra, "c-k"), what=lambda: log.read_text())
        with bezalel.client() as own:
            wait_for(lambda: settled_bus(own), what="bezalel's bus to settle")
        assert len(responses(ezra, "c-k")) == 1
        provider.reply = "next"
        after = ezra.request("bezalel", {"prompt": "and now?", "conversation": "k"},
                             timeout=30)  # the restarted runtime remembers the stored turn
        assert after["payload"]["text"] == "next"
    assert answer[0]["payload"]["text"] == "remembered"
    assert answer[0]["id"] == response_id({"from": "ezra", "id": "req-k"})
    assert len(asked_about(provider, "keep me")) == 1  # not asked again after the restart
    rows = stored_rows(bezalel.state)
    assert rows[0] == ("ezra", "req-k", "remembered") and len(rows) == 2  # req-k once
    assert asked_about(provider, "and now?")[0][1:] == [user("keep me"),
                                                        assistant("remembered"),
                                                        user("and now?")]


# The operator's memory API on the gateway


@pytest.fixture
def memory_app(tmp_path: Path, provider: MockProvider) -> Flask:
    """bezalel's gateway (built-in runtime) with a conversation of ezra's remembered."""
    app = bezalel_app(write_registry(tmp_path, provider.url), tmp_path / "state")
    for number in (1, 2):
        store_turn(app.config["STATE_DIR"], "ezra", "c 1", f"r{number}", f"q{number}",
                   {"text": f"a{number}"}, MemorySettings())
    return app


def signed(client: FlaskClient, agent: str, method: str, path: str,
           query: str = "") -> Any:
    headers = signed_headers(agent, b"", path=path, method=method, query=query,
                             content_type=None)
    return client.open(f"{path}?{query}" if query else path, method=method, headers=headers)


@pytest.mark.parametrize(("method", "path", "query"), [
    ("GET", "/memory", ""), ("GET", "/memory/turns", "peer=ezra&conversation=c+1"),
    ("DELETE", "/memory", "peer=ezra&conversation=c+1")])
def test_the_memory_api_is_the_operators_only(memory_app: Flask, method: str, path: str,
                                              query: str) -> None:
    client = memory_app.test_client()
    for agent in ("bezalel", "ezra"):  # the agent's own key, and another agent's
        refused = signed(client, agent, method, path, query)
        assert refused.status_code == 403, refused.json
        assert refused.json["error"] == (f"{path} is allowed only to the operator "
                                         f"('operator'), not {agent!r}")
    unsigned = client.open(f"{path}?{query}", method=method)
    assert unsigned.status_code == 401
    assert len(turns(memory_app.config["STATE_DIR"], "ezra", "c 1")) == 2
    assert signed(client, OPERATOR, method, path, query).status_code == 200


def test_the_operator_lists_shows_and_forgets_a_conversation(memory_app: Flask) -> None:
    client = memory_app.test_client()
    listed = signed(client, OPERATOR, "GET", "/memory").json
    assert [(c["peer"], c["conversation"], c["turns"]) for c in listed["conversations"]] == [
        ("ezra", "c 1", 2)]
    shown = signed(client, OPERATOR, "GET", "/memory/turns", "peer=ezra&conversation=c+1").json
    assert [(t["request_id"], t["prompt"], t["answer"]) for t in shown["turns"]] == [
        ("r1", "q1", "a1"), ("r2", "q2", "a2")]
    other = signed(client, OPERATOR, "GET", "/memory/turns", "peer=allegro&conversation=c+1")
    assert other.json["turns"] == []  # scoped by peer
    gone = signed(client, OPERATOR, "DELETE", "/memory", "peer=ezra&conversation=c+1")
    assert gone.json["forgotten"] == 2
    assert signed(client, OPERATOR, "GET", "/memory").json["conversations"] == []
    nothing = signed(client, OPERATOR, "DELETE", "/memory", "peer=ezra&conversation=c+1")
    assert (nothing.status_code, nothing.json["forgotten"]) == (200, 0)


@pytest.mark.parametrize(("query", "problems"), [
    ("", {"peer": "None is not an agent's or identity's name (a-z, digits, '-'; up to 31 "
                  "characters)",
          "conversation": "None is not 1 to 128 printable characters (no control "
                          "characters, no line breaks, no surrogates)"}),
    ("peer=Ezra&conversation=c", {"peer": "'Ezra' is not an agent's or identity's name (a-z, "
                                           "digits, '-'; up to 31 characters)"}),
    ("peer=ezra%0A&conversation=c", {"peer": "'ezra\\n' is not an agent's or identity's name "
                                             "(a-z, digits, '-'; up to 31 characters)"}),
    ("peer=ezra&conversation=a%0Ab", {"conversation": "'a\\nb' is not 1 to 128 printable "
                                      "characters (no control characters, no line breaks, "
                                      "no surrogates)"}),
    ("peer=ezra&conversation=", {"conversation": "'' is not 1 to 128 printable characters "
                                 "(no control characters, no line breaks, no surrogates)"}),
    ("peer=ezra&conversation=%ED%A0%80", {}),  # not UTF-8: decoded as U+FFFD, a valid id
    (f"peer=ezra&conversation={'x' * 129}", {"conversation": f"'{'x' * 56}... is not 1 to 128 "
                                             "printable characters (no control characters, "
                                             "no line breaks, no surrogates)"}),
])
def test_bad_query_values_are_400_naming_the_rule(memory_app: Flask, query: str,
                                                 problems: dict[str, str]) -> None:
    client = memory_app.test_client()
    for method, path in (("GET", "/memory/turns"), ("DELETE", "/memory")):
        found = signed(client, OPERATOR, method, path, query)
        if not problems:
            assert found.status_code == 200
            continue
        assert found.status_code == 400, found.json
        assert found.json == {"error": "invalid query", "problems": problems}
    assert len(turns(memory_app.config["STATE_DIR"], "ezra", "c 1")) == 2


def test_the_memory_api_is_in_openapi_on_builtin_runtimes_only(
        memory_app: Flask, tmp_path: Path) -> None:
    document: dict[str, Any] = memory_app.test_client().get("/openapi.json").json or {}
    assert set(document["paths"]["/memory"]) == {"get", "delete"}
    assert "/memory/turns" in document["paths"]
    ezra = bezalel_app(Path(memory_app.config["REGISTRY"]), tmp_path / "ezra", AGENT="ezra",
                       BUS_PRIVATE_KEY=KEYS["ezra"])  # no runtime: no memory API
    assert "/memory" not in (ezra.test_client().get("/openapi.json").json or {})["paths"]
    assert ezra.test_client().get("/memory").status_code == 404


def test_fleet_ask_refuses_a_bad_conversation_id_before_sending(tmp_path: Path) -> None:
    registry = write_registry(tmp_path, "http://127.0.0.1:9/v1")
    done = CliRunner().invoke(main, ["--registry", str(registry), "ask", "-c", "code",
                                     "--conversation", "a\nb", "hi"])
    assert done.exit_code == 2
    assert "Invalid value for '--conversation': 'a\\nb' is not 1 to 128 printable characters " \
           "(no control characters, no line breaks, no surrogates)" in done.output, done.output


def test_a_replayed_forget_is_refused_and_forgets_nothing_stored_since(memory_app: Flask) -> None:
    client = memory_app.test_client()
    query = "peer=ezra&conversation=c+1"
    headers = signed_headers(OPERATOR, b"", path="/memory", method="DELETE", query=query,
                             content_type=None)
    first = client.delete(f"/memory?{query}", headers=headers)
    assert (first.status_code, first.json["forgotten"]) == (200, 2)
    store_turn(memory_app.config["STATE_DIR"], "ezra", "c 1", "r3", "q3", {"text": "a3"},
               MemorySettings())
    replay = client.delete(f"/memory?{query}", headers=headers)
    assert replay.status_code == 409, replay.json
    assert replay.json["error"].startswith("request 'sig-")
    assert replay.json["error"].endswith("; a replayed request is refused")
    assert [t["request_id"] for t in turns(memory_app.config["STATE_DIR"], "ezra", "c 1")] == [
        "r3"]
    again = signed(client, OPERATOR, "DELETE", "/memory", query)  # signed anew: forgets
    assert (again.status_code, again.json["forgotten"]) == (200, 1)


RULE = "is not 1 to 128 printable characters (no control characters, no line breaks, no " \
       "surrogates)"


@pytest.mark.parametrize(("args", "problem"), [
    ([b"memory", b"show", b"bezalel", b"\xed\xa0\x80"],
     f"Invalid value for 'CONVERSATION': '\\udced\\udca0\\udc80' {RULE}"),
    ([b"memory", b"forget", b"bezalel", b"\xff", b"--yes"],
     f"Invalid value for 'CONVERSATION': '\\udcff' {RULE}"),
    ([b"memory", b"show", b"bezalel", b"x" * 100_000],
     f"Invalid value for 'CONVERSATION': '{'x' * 56}... {RULE}"),
    ([b"memory", b"forget", b"bezalel", b"c", b"--peer", b"\xff", b"--yes"],
     "Invalid value for '--peer': '\\udcff' is not an agent's or identity's name (a-z, "
     "digits, '-'; up to 31 characters)"),
    ([b"ask", b"-c", b"code", b"--conversation", b"y" * 100_000, b"hi"],
     f"Invalid value for '--conversation': '{'y' * 56}... {RULE}"),
])
def test_fleet_memory_and_ask_check_ids_before_sending_and_quote_them_short(
        tmp_path: Path, args: list[bytes], problem: str) -> None:
    registry = write_registry(tmp_path, "http://127.0.0.1:9/v1")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.getcwd(),
           "FLEET_SECRETS": str(write_operator_secrets(tmp_path))}
    done = subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                           "--registry", str(registry), *args], capture_output=True,
                          timeout=60, check=False, env=env)
    error = done.stderr.decode()
    assert done.returncode == 2, error
    assert problem in error and "Traceback" not in error
    assert len(error) < 1000


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_the_cli_checks_take_what_the_gateway_takes_and_quote_it_short(value: str) -> None:
    for check, valid in ((checked_id, is_conversation(value)),
                         (checked_peer, NAME_RE.fullmatch(value) is not None)):
        try:
            assert check(value) == value and valid
        except click.BadParameter as exc:
            assert not valid
            assert len(str(exc)) < 200 and str(exc).isprintable()
