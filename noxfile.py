"""Developer sessions: `nox -s tests lint typing`; `nox -s lab` for the real-node tests only."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"


def install(session: nox.Session) -> None:
    """The project (editable) with its test extra and the dev dependency group."""
    session.install("-U", "pip>=25.1")
    session.install("-e", ".[test]", "--group", "dev")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (lab tests need root and the apt packages from scripts/setup): the
    unit tier in parallel, then the slow and lab tiers."""
    install(session)
    session.run("pytest", *session.posargs)
    session.run("pytest", "-m", "lab or slow", "-n", "0", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """The unit tier (no lab, nothing slow), in parallel: plain ``pytest``."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lab(session: nox.Session) -> None:
    """Only the tests that run on real systemd-nspawn lab nodes (root)."""
    install(session)
    session.run("pytest", "-m", "lab", "-n", "0", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree, and the import layers."""
    install(session)
    session.run("ruff", "check", ".")
    session.run("lint-imports")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy over the packages and the pyinfra entry files."""
    install(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks under bench/ (status, lab, deploy, bus, webhook)."""
    install(session)
    for script in ("status_bench", "lab_bench", "deploy_bench", "bus_bench", "webhook_bench"):
        session.run("python", f"bench/{script}.py")
