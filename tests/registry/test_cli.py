"""The `fleet` CLI over the registry: exit codes and one-line errors with hints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from fleet.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_validate_example_registry(repo: Path) -> None:
    code, out, _ = run("registry", "validate", str(repo / "registry.yaml"))
    assert code == 0
    assert out.strip().endswith("ok, 3 agents (ezra-primary, bezalel, allegro)")


def test_validate_typo_exits_1_naming_line_and_field(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "registry.yaml"
    text = (repo / "registry.yaml").read_text()
    bad.write_text(text.replace("    role: worker", "    rol: worker", 1))
    code, out, err = run("registry", "validate", str(bad))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == (f"Error: {bad}:20: wizards.bezalel.rol: unknown field; did you mean "
                        "'role'? allowed: host, role, model, health_endpoint, capabilities, "
                        "description, gateway_port, ssh_user, ssh_port, soul, region, provider, "
                        "authorized_keys, config, runtime, tools, state, schedules")
    assert f"Error: {bad}:18: wizards.bezalel.role: missing required field" in lines
    assert lines[-1] == "Hint: Fix the registry file, then check it with `fleet registry validate`."
    assert "Traceback" not in err


def test_registry_option_and_env(repo: Path) -> None:
    path = str(repo / "registry.yaml")
    code, out, _ = run("--registry", path, "registry", "show", "--json")
    assert code == 0
    assert list(json.loads(out)["wizards"]) == ["ezra-primary", "bezalel", "allegro"]
    code, out, _ = run("registry", "show", env={"FLEET_REGISTRY": path})
    assert code == 0 and out.splitlines()[1].startswith("ezra-primary     orchestrator")


def test_missing_registry_is_one_line(tmp_path: Path) -> None:
    code, _, err = run("--registry", str(tmp_path / "x.yaml"), "registry", "show")
    assert code == 1
    assert err.splitlines() == [
        f"Error: {tmp_path / 'x.yaml'}: registry file not found",
        "Hint: Pass --registry PATH or set FLEET_REGISTRY; see README.md for the format.",
    ]


def test_find_by_capability(repo: Path) -> None:
    code, out, _ = run("--registry", str(repo / "registry.yaml"), "find", "--capability", "code")
    assert code == 0 and out.split("\t")[0] == "bezalel"
    code, _, err = run("--registry", str(repo / "registry.yaml"), "find", "-c", "flying")
    assert code == 1 and err.strip() == "Error: no agent has capability 'flying'"


def test_usage_error_exits_2() -> None:
    code, _, err = run("find")
    assert code == 2 and "Missing option '--capability'" in err


def test_every_command_has_help() -> None:
    def walk(command, path):  # type: ignore[no-untyped-def]
        assert command.help, f"`{' '.join(path)}` has no help text"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
    walk(main, ["fleet"])


def test_pyinfra_debug_inventory_shows_groups(repo: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", "inventory.py", "debug-inventory"],
        cwd=repo, capture_output=True, text=True, check=True,
        env={**os.environ, "FLEET_REGISTRY": str(repo / "registry.yaml")},
    )
    out = done.stdout + done.stderr
    assert "[ezra-primary]" in out and "[allegro]" in out
    assert "--> Groups: orchestrator, ansible-deploy, webhook-receiver, inventory" in out
    assert '"ssh_hostname": "203.0.113.20"' in out


def test_pyinfra_inventory_reports_registry_errors(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_text("wizards:\n  x:\n    host: 192.0.2.1\n    role: wrker\n    model: m\n")
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", "inventory.py", "debug-inventory"],
        cwd=repo, capture_output=True, text=True, env={**os.environ, "FLEET_REGISTRY": str(bad)},
    )
    assert done.returncode != 0
    assert "wizards.x.role: 'wrker' is not a role (orchestrator, worker)" in done.stderr
    assert "Traceback" not in done.stderr
