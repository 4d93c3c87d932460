"""The project uses pyinfra through its documented interfaces only, so that a pyinfra upgrade
is a version bump: no private (``_``) module, name or attribute, none of pyinfra's internal
bookkeeping of operations (``state.ops``, ``op_meta``, the operation order, the deploy-file
pass counter), and no CLI internals beyond the console script's entry point."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pyinfra
import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["fleet", "bus", "deploys", "bench", "tests", "deploy.py", "inventory.py",
           "webhook_app.py", "noxfile.py"]
INTERNAL_ATTRIBUTES = {
    "ops", "op_meta", "current_op_file_number", "get_op_order", "get_op_data_for_host",
    "get_meta_for_host", "get_op_meta", "op_hash_order", "current_op_hash", "executing_op_hash",
    "current_deploy_name", "current_op_global_arguments", "loop_position", "in_op",
    "operation_meta", "command_generator", "failed_hosts", "activated_hosts",
}
PYINFRA_OBJECTS = {"state", "host", "config", "inventory", "pyinfra"}
ENTRY_POINT = ("pyinfra_cli.main", "main")  # the `pyinfra` console script
DOCUMENTED = {  # documented names in helper modules ("Using Operations": conditional ops)
    ("pyinfra.operations.util", "any_changed"), ("pyinfra.operations.util", "all_changed")}


@functools.cache
def pyinfra_private_attributes() -> frozenset[str]:
    """The ``_private`` attributes pyinfra's own classes set on ``self``."""
    names = set()
    for path in Path(pyinfra.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "self" and node.attr.startswith("_")
                    and not node.attr.endswith("__")):
                names.add(node.attr)
    return frozenset(names)


def python_files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = REPO / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return [path for path in files if path != Path(__file__).resolve()]


def violations(source: str, filename: str = "<string>") -> list[str]:
    """Every use of a private or internal pyinfra name in ``source``."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += [f"{where}: import {alias.name}"] if bad_module(alias.name) else []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("pyinfra", "pyinfra_cli"):
                continue
            for alias in node.names:
                if (node.module, alias.name) == ENTRY_POINT or \
                        (node.module, alias.name) in DOCUMENTED:
                    continue
                if bad_module(node.module) or alias.name.startswith("_"):
                    found.append(f"{where}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            attr = node.attr
            private = attr.startswith("_") and not attr.endswith("__")
            receiver = node.value.id if isinstance(node.value, ast.Name) else ""
            theirs = attr in pyinfra_private_attributes() and receiver not in ("self", "cls")
            if attr in INTERNAL_ATTRIBUTES or theirs or (private and receiver in PYINFRA_OBJECTS):
                found.append(f"{where}: .{attr}")
    return found


def bad_module(module: str) -> bool:
    """A pyinfra module that is private, a helper (``util``) or CLI internals."""
    parts = module.split(".")
    if parts[0] not in ("pyinfra", "pyinfra_cli"):
        return False
    return (parts[0] == "pyinfra_cli" or any(part.startswith("_") for part in parts)
            or "util" in parts)


def test_the_project_touches_no_private_pyinfra_name() -> None:
    found = [problem for path in python_files()
             for problem in violations(path.read_text(encoding="utf-8"),
                                       str(path.relative_to(REPO)))]
    assert found == []


@pytest.mark.parametrize("source", [
    "this_pass = state.current_op_file_number",
    "for op_hash, data in state.ops[host].items(): pass",
    "names = state.op_meta[op_hash].names",
    "meta = op_data.operation_meta",
    "changed = op._maybe_is_change",
    "failed = {h.name for h in state.failed_hosts}",
    "from pyinfra.operations.util.files import generate_color_diff",
    "from pyinfra.api.util import make_hash",
    "import pyinfra_cli.prints",
    "from pyinfra_cli.prints import print_meta",
    "host._connector",
])
def test_the_check_catches_internals(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize("source", [
    "from pyinfra import host, state",
    "from pyinfra.api import FunctionCommand, operation",
    "from pyinfra.operations import files, server, systemd",
    "from pyinfra_cli.main import main",
    "from pyinfra.operations.util import any_changed",
    "if not state.is_executing: pass",
    "meta.did_change() and meta.is_complete()",
    "self._registry = None",
])
def test_the_check_allows_documented_names(source: str) -> None:
    assert violations(source) == []
