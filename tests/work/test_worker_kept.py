"""The item a worker keeps (``work-current.json``) against what can go wrong with it: an item
as large as the bus lets through, a hostile or broken file in the state dir, a resumed item
that cannot start. No gateway: the worker's messages go to a recording sender."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.core.registry import load_registry
from fleet.node.work.messages import EVENT, MAX_BODY, OUTCOME, ItemOrder
from fleet.node.work.worker import CURRENT_FILE, Worker

GIT_URL = "http://127.0.0.1:3000/acme/shop.git"


class Recorder:
    """A bus client that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | None, str, Any]] = []

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]:
        self.sent.append((to, type, payload))
        return {}


def make_worker(folder: Path, env: dict[str, str] | None = None) -> tuple[Worker, Recorder]:
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump({"wizards": {
        "ezra": {"host": "127.0.0.1", "role": "orchestrator", "model": "test/m",
                 "gateway_port": 9001},
        "bezalel": {"host": "127.0.0.1", "role": "worker", "model": "test/m",
                    "gateway_port": 9002, "capabilities": ["code"]}},
        "work": {"test_command": ["python3", "t.py"], "sources": [
            {"forge": "gitea", "api_url": "http://127.0.0.1:3000/api/v1", "git_url": GIT_URL,
             "repo": "acme/shop", "label": "fleet", "token": "GITEA_TOKEN"}]}}))
    state = folder / "state"
    state.mkdir()
    recorder = Recorder()
    return Worker("bezalel", load_registry(path), state, provider=None,  # type: ignore[arg-type]
                  sender=lambda: recorder, env=env or {}), recorder


def order(body: str = "b", title: str = "t") -> ItemOrder:
    return ItemOrder("w-0123456789ab", 1, title, body,
                     "http://127.0.0.1:3000/acme/shop/issues/1", "gitea", "acme/shop", GIT_URL,
                     "main")


@pytest.mark.parametrize("text", ["\U0001f41b" * MAX_BODY, "\ud800" * MAX_BODY,
                                  "\x01" * MAX_BODY], ids=["emoji", "surrogate", "control"])
def test_the_largest_item_the_bus_lets_through_is_kept_whole(tmp_path: Path,
                                                             text: str) -> None:
    """An issue body of 8192 emoji (or control characters, or lone surrogates) is a valid
    work item; JSON escapes it to 12 (6) bytes a character, past the 64 KiB the file was read
    up to, so a resumed runtime took it for a broken file and dropped the item unreported."""
    worker, _ = make_worker(tmp_path)
    worker.keep("ezra", order(body=text, title="\U0001f41b" * 200).payload(), 1)
    kept = worker.kept()
    assert kept is not None and kept[1]["body"] == text and kept[2] == 1


def test_a_resumed_item_whose_token_is_gone_fails_with_the_reason(tmp_path: Path) -> None:
    """The forge token left the agent's environment while the runtime was down: the item was
    announced ``resumed``, its file removed, and no outcome ever sent (the orchestrator waited
    max_minutes + 5 min for nothing)."""
    worker, recorder = make_worker(tmp_path, env={})
    worker.keep("ezra", order().payload(), 0)
    worker.resume()
    outcomes = [payload for _, kind, payload in recorder.sent if kind == OUTCOME]
    assert outcomes == [{"item": "w-0123456789ab", "state": "failed", "pr_url": None,
                         "reason": "not resumed: the forge token GITEA_TOKEN is not in "
                                   "bezalel's environment"}]
    assert [kind for _, kind, _ in recorder.sent] == [OUTCOME]  # not announced as resumed
    assert worker.current is None and not (worker.state_dir / CURRENT_FILE).exists()


@pytest.mark.parametrize("content", ["[" * 100_000, "{\"a\":" * 60_000,
                                     json.dumps({"from": "ezra", "payload": order().payload(),
                                                 "resumes": -5})],
                         ids=["brackets", "objects", "negative"])
def test_a_kept_file_nested_too_deep_or_counting_backwards_is_dropped(
        tmp_path: Path, content: str) -> None:
    """100,000 brackets raised RecursionError out of resume (not a ValueError): the runtime
    logged it at every start and the file stayed for good; a negative count resumed an item
    forever."""
    worker, recorder = make_worker(tmp_path)
    (worker.state_dir / CURRENT_FILE).write_text(content)
    assert worker.resume() is None
    assert not (worker.state_dir / CURRENT_FILE).exists() and recorder.sent == []


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_kept_path_that_is_no_regular_file_is_dropped_without_blocking(
        tmp_path: Path, kind: str) -> None:
    """A FIFO in its place blocked the runtime's start for good (open waits for a writer);
    a symlink was followed; a directory raised out of resume and stayed."""
    worker, recorder = make_worker(tmp_path)
    path = worker.state_dir / CURRENT_FILE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target = tmp_path / "elsewhere.json"
        target.write_text(json.dumps({"from": "ezra", "payload": order().payload(),
                                      "resumes": 0}))
        path.symlink_to(target)
    else:
        path.mkdir()
    done: list[str | None] = []
    thread = threading.Thread(target=lambda: done.append(worker.resume()), daemon=True)
    thread.start()
    thread.join(10)
    assert done == [None]
    assert not os.path.lexists(path) and recorder.sent == []
    assert EVENT not in [kind for _, kind, _ in recorder.sent]


class DownGateway(Recorder):
    """The agent's gateway restarting: nothing can be queued."""

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]:
        raise ConnectionError("gateway down")


def test_an_outcome_that_could_not_be_queued_keeps_the_item_for_the_next_start(
        tmp_path: Path) -> None:
    """Outside attack r38: the kept item was forgotten although its outcome never reached the
    gateway; the orchestrator then waited max_minutes + 5 min. It is kept, and the next start
    resumes the item and reports it."""
    worker, recorder = make_worker(tmp_path, env={})
    worker.keep("ezra", order().payload(), 0)
    worker.sender = DownGateway
    worker.resume()  # fails the item (no token): its outcome cannot be queued
    assert (worker.state_dir / CURRENT_FILE).is_file()
    worker.sender = lambda: recorder
    worker.resume()
    assert [kind for _, kind, _ in recorder.sent] == [OUTCOME]
    assert not (worker.state_dir / CURRENT_FILE).exists()
