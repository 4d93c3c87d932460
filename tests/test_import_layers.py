"""The import layers hold: the contracts in pyproject.toml (``lint-imports``: the bus imports
nothing of the fleet's, ``fleet.core`` nothing of fleet outside it, ``fleet.node`` no controller
code, the bus's store layer knows no Flask, no cycles between the modules of a package), and no
module is part of an import cycle at all, lazy imports (inside functions) included: a package's
``__init__`` and its own modules too."""

from __future__ import annotations

import functools
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bus", "fleet", "deploys")


@functools.cache
def graph() -> grimp.ImportGraph:
    """Every import of our packages (``if TYPE_CHECKING:`` ones left out: they never run)."""
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("source", "allowed"), [
    ("fleet.core", {"fleet.core"}),
    ("fleet.node", {"fleet.core", "fleet.node"}),
])
def test_the_layer_contracts_forbid_every_other_part_of_fleet(source: str,
                                                              allowed: set[str]) -> None:
    """"Imports nothing of fleet outside" holds for a package added later too: the contract of
    ``source`` forbids every child of ``fleet`` but ``allowed``, and ``deploys``."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [contract for contract in config["tool"]["importlinter"]["contracts"]
                   if contract.get("source_modules") == [source]]
    children = graph().find_children("fleet")
    assert set(contract["forbidden_modules"]) >= children - allowed | {"deploys"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_part_of_an_import_cycle(package: str) -> None:
    found = graph()
    cycles = []
    for importer in sorted(found.find_descendants(package) | {package}):
        for imported in sorted(found.find_modules_directly_imported_by(importer)):
            if imported.split(".")[0] not in PACKAGES:
                continue
            back = found.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == []
