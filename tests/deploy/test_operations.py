"""The deploy's custom operations in pyinfra's own test style: facts in, commands out.

Each ``operations/<module>.<operation>/<case>.json`` names the inputs and what the operation
yields, without a node:

- ``args``: the operation's keyword arguments (``{"hidden": TEXT}`` becomes a ``HiddenValue``,
  ``{"changed": BOOL}`` the result of an earlier operation that did or did not change);
- ``node``: the host's ``NodeState`` snapshot, passed as the ``node`` argument (missing keys
  default to an empty node);
- ``facts``: other facts the operation reads, by fact class name (``{"FileContents": [...]}``);
- ``executing`` (default true): pyinfra's execute stage, else its prepare stage (plan, dry run);
- ``diff``: pyinfra runs with ``--diff``; an operation taking ``diffs`` gets a
  :class:`deploys.ops.DiffReport` masking ``secrets`` (a list, default none) whose record
  must receive exactly the diff lines logged;
- expected: ``commands`` (strings, ``["upload", CONTENT, DEST]``, ``["function", NAME]``) and,
  when nothing is yielded, ``noop`` (the reason given); or ``exception`` (``name``, ``message``);
  ``logs``: the lines it logs (a ``--diff``), colours left out.

The operation's body is called as pyinfra calls it, inside pyinfra's host and state context
(:mod:`pyinfra.context`), with a stand-in host and state that answer facts from the case.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, HiddenValue, StringCommand
from pyinfra.context import ctx_host, ctx_state

import deploys
from deploys.ops import DiffReport
from fleet.core.masking import Masker

CASES = Path(__file__).parent / "operations"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
EMPTY_NODE: dict[str, Any] = {"paths": {}, "current": None, "releases": [], "user": False,
                              "group": False, "unit": {}, "authorized_keys": [],
                              "schedules": {"files": [], "timers": {}}}


class FakeHost:
    """The host an operation body sees: facts from the case; records noops and logs."""

    name = "node"
    print_prefix = "[node] "

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.noop_description: str | None = None
        self.logs: list[str] = []

    def noop(self, description: str) -> None:
        self.noop_description = description

    def get_fact(self, cls: type, **kwargs: Any) -> Any:
        return self.facts[cls.__name__]

    def log(self, message: str, log_func: Any = None) -> None:
        self.logs.append(message)


class Result:
    """The result of an earlier operation (what an ``OperationMeta`` tells once it ran)."""

    def __init__(self, changed: bool) -> None:
        self.changed = changed
        self.will_change = changed
        self.stdout = ""

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return self.changed


def value(raw: Any) -> Any:
    """A case's argument value, with hidden values and operation results made."""
    if isinstance(raw, dict) and "hidden" in raw:
        return HiddenValue(raw["hidden"])
    if isinstance(raw, dict) and "changed" in raw:
        return Result(raw["changed"])
    if isinstance(raw, list):
        return [value(item) for item in raw]
    return raw


def load_operation(name: str) -> Any:
    """``ops.managed_file`` -> the operation object in ``deploys.ops``."""
    module, _, op = name.rpartition(".")
    return getattr(importlib.import_module(f"deploys.{module}"), op)


def arguments(data: dict[str, Any]) -> dict[str, Any]:
    """The case's arguments, with hidden values and the node snapshot filled in."""
    args = {key: value(raw) for key, raw in data.get("args", {}).items()}
    if "node" in data:
        args["node"] = {**EMPTY_NODE, **data["node"]}
    return args


def as_json(command: Any) -> Any:
    """A yielded command as the cases write it."""
    if isinstance(command, str):
        return command.strip()
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        source = command.src
        content = source.getvalue() if hasattr(source, "getvalue") else str(source)
        return ["upload", content, command.dest]
    if isinstance(command, FunctionCommand):
        return ["function", command.function.__name__]
    raise AssertionError(f"unexpected command {command!r}")


def cases() -> list[Any]:
    return [pytest.param(path, id=f"{path.parent.name}/{path.stem}")
            for path in sorted(CASES.glob("*/*.json"))]


@pytest.mark.parametrize("path", cases())
def test_operation(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = json.loads(path.read_text())
    body = inspect.unwrap(load_operation(path.parent.name))
    host = FakeHost(data.get("facts", {}))
    state = SimpleNamespace(is_executing=data.get("executing", True),
                            config=SimpleNamespace(DIFF=data.get("diff", False)))
    args = arguments(data)
    recorded: dict[str, list[str]] = {}
    if "diffs" in inspect.signature(body).parameters:
        args["diffs"] = DiffReport(Masker(data.get("secrets", [])), recorded.__setitem__)
    with ctx_state.use(state), ctx_host.use(host), caplog.at_level("INFO", "pyinfra"):
        if "exception" in data:
            with pytest.raises(Exception) as raised:
                list(body(**args))
            assert type(raised.value).__name__ == data["exception"]["name"]
            assert str(raised.value) == data["exception"]["message"]
            return
        commands = [as_json(command) for command in body(**args)]
    assert commands == data["commands"]
    if not commands:
        assert host.noop_description == data["noop"]
    if "logs" in data:
        logged = [*host.logs, *(record.getMessage() for record in caplog.records)]
        assert [ANSI.sub("", line).rstrip() for line in logged] == data["logs"]
    if data.get("diff") and "logs" in data:  # the run record gets the lines --diff shows
        assert recorded == {args["dest"]: [line[2:] for line in data["logs"][1:-1]]}


def test_every_custom_operation_has_cases() -> None:
    """Each operation of every module of the deploy (``deploys/``) has at least one case."""
    tested = {path.name for path in CASES.iterdir() if path.is_dir()}
    found = set()
    modules = sorted(info.name for info in pkgutil.iter_modules(deploys.__path__))
    assert {"ops", "lock", "gate", "verify", "audit"} <= set(modules)
    for module in modules:
        loaded = importlib.import_module(f"deploys.{module}")
        for name, value in vars(loaded).items():
            body = inspect.unwrap(value) if callable(value) else None
            if body is not value and inspect.isgeneratorfunction(body) \
                    and getattr(value, "__module__", "") == loaded.__name__:
                found.add(f"{module}.{name}")
    assert found and found <= tested, sorted(found - tested)


@pytest.mark.parametrize("before", ["", "ssh-ed25519 AAAAC3old lab\n", "ssh-ed25519 AAAAC3old lab",
                                    "ssh-ed25519 AAAAC3old lab\n\n", "# no newline at the end"])
def test_added_keys_each_get_a_line_of_their_own_after_a_last_line_without_newline(
        tmp_path: Path, before: str) -> None:
    """The commands of ``authorized_keys_added`` run in a real shell: a key file whose last
    line lacks its newline gets it before the added keys (else the first one joins that line
    and both keys stop working)."""
    keys_file = tmp_path / "ssh" / "authorized_keys"
    keys_file.parent.mkdir()
    keys_file.write_text(before, newline="")
    added = ["ssh-ed25519 AAAAC3one op@laptop", "ssh-ed25519 AAAAC3two op@desk"]
    body = inspect.unwrap(load_operation("ops.authorized_keys_added"))
    state = SimpleNamespace(is_executing=True, config=SimpleNamespace(DIFF=False))
    with ctx_state.use(state), ctx_host.use(FakeHost({})):
        commands = [as_json(command) for command in body(
            keys_file=str(keys_file), keys=added, node={**EMPTY_NODE, "authorized_keys": []})]
    for command in commands:
        subprocess.run(["sh", "-c", command], check=True, timeout=30)
    lines = keys_file.read_text().splitlines()
    assert lines[-2:] == added
    assert lines[:-2] == before.splitlines()
    assert keys_file.read_text().endswith("\n")
