"""The orchestrator's gateway with work items, for the work API, CLI and dashboard tests:
ezra (orchestrator) and bezalel (worker) of :func:`tests.bus.conftest.write_registry`, the
bus keys of :data:`tests.bus.conftest.KEYS`, items stored through the real store."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from fleet.node.gateway import create_app
from fleet.node.work import items
from tests.bus.conftest import KEYS, PUBLIC
from tests.jsonhttp import WsgiLoopback

FORGE = "http://192.0.2.5:3000"


def gateway_app(registry: Path, state: Path, agent: str = "ezra") -> Flask:
    """``agent``'s gateway app (delivery worker off)."""
    return create_app({"AGENT": agent, "REGISTRY": str(registry), "STATE_DIR": str(state),
                       "BUS_PUBLIC_KEYS": PUBLIC, "BUS_PRIVATE_KEY": KEYS[agent],
                       "BUS_WORKER": False, "TESTING": True})


def issue(state: Path, number: int, title: str = "Fix the parser") -> str:
    """A queued item of issue ``number`` of acme/shop on the Gitea stand-in; its id."""
    return items.create(state, "gitea", "acme/shop", number,
                        f"{FORGE}/acme/shop/issues/{number}", title, "code",
                        now=1_800_000_000.0 + number, api_url=f"{FORGE}/api/v1")["id"]


def failed(state: Path, number: int, reason: str = "tests still fail after 20 steps") -> str:
    """An item that went to bezalel and failed; its id."""
    item_id = issue(state, number)
    items.start(state, item_id, "bezalel", now=1_800_000_100.0 + number)
    items.fail(state, item_id, reason, now=1_800_000_200.0 + number)
    return item_id


def proposed(state: Path, number: int) -> str:
    """An item whose pull request is open after two turns, a tool call and a test run."""
    item_id = issue(state, number)
    items.start(state, item_id, "bezalel", now=1_800_000_100.0)
    for kind, detail in (("turn", {"step": 1, "tool_calls": 1}),
                         ("tool", {"tool": "write_file", "path": "shop/parser.py"}),
                         ("test", {"exit": 0, "passed": 12, "failed": 0}),
                         ("pushed", {"branch": f"fleet/ISSUE-{number}", "commits": 1})):
        items.record(state, item_id, kind, detail, now=1_800_000_110.0)
    items.propose(state, item_id, f"{FORGE}/acme/shop/pulls/{number + 100}",
                  now=1_800_000_120.0)
    return item_id


def serving(app: Flask, port: int) -> WsgiLoopback:
    """``app`` served on 127.0.0.1:``port`` by a thread; ``with`` yields its base URL."""
    return WsgiLoopback(app, port=port)
