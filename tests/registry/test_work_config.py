"""The registry's ``work:`` section (:mod:`fleet.core.work_config`): every value checked where
it enters, each problem one line with file and line; whatever is accepted round-trips and holds
nothing that could become a control character or an option in an argv or URL."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.core.errors import RegistryError
from fleet.core.registry import parse_registry
from fleet.core.validate import HOSTNAME_RE, host_problem
from fleet.core.work_config import (
    MAX_SOURCES,
    WorkConfig,
    WorkSource,
    allowed_endpoints,
)

PATH = Path("registry.yaml")
WIZARDS = {"a": {"host": "192.0.2.1", "role": "orchestrator", "model": "m"},
           "b": {"host": "192.0.2.2", "role": "worker", "model": "m",
                 "capabilities": ["code", "docs"]}}
SOURCE = {"forge": "gitea", "api_url": "http://192.0.2.5:3000/api/v1",
          "git_url": "http://192.0.2.5:3000/acme/shop.git", "repo": "acme/shop",
          "label": "fleet", "token": "GITEA_TOKEN", "capability_labels": {"bug": "code"}}
WORK = {"test_command": ["python3", "-m", "pytest", "-q"], "max_steps": 20, "max_minutes": 15,
        "sources": [SOURCE]}
LINE_RE = re.compile(r"registry\.yaml:\d+: work[.\w\[\]-]*: .+")


def load(work: Any) -> WorkConfig | None:
    data = {"wizards": WIZARDS, "work": work}
    return parse_registry(yaml.safe_dump(data, sort_keys=False), PATH).work


def problems(work: Any) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        load(work)
    return caught.value.problems


def with_source(**changes: Any) -> dict[str, Any]:
    work = copy.deepcopy(WORK)
    work["sources"][0].update(changes)
    return work


def test_the_example_section_loads() -> None:
    config = load(WORK)
    assert config is not None and config.line > 0 and config.sources[0].line > config.line
    assert config == dataclasses.replace(WorkConfig(
        test_command=("python3", "-m", "pytest", "-q"), max_steps=20, max_minutes=15,
        sources=(WorkSource(forge="gitea", api_url="http://192.0.2.5:3000/api/v1",
                            git_url="http://192.0.2.5:3000/acme/shop.git", repo="acme/shop",
                            label="fleet", token="GITEA_TOKEN",
                            capability_labels=(("bug", "code"),),
                            line=config.sources[0].line),),
        line=config.line), line=config.line)
    assert config.sources[0].capability_for(["fleet", "bug"]) == "code"
    assert config.sources[0].capability_for(["fleet"]) is None


def test_defaults_and_registry_round_trip() -> None:
    work = {"test_command": ["make", "test"], "sources": [SOURCE]}
    config = load(work)
    assert config is not None and (config.max_steps, config.max_minutes, config.intake_on) == (
        20, 15, "*:0/10")
    hourly = load({**work, "intake_on": "hourly"})
    assert hourly is not None and hourly.intake_on == "hourly"
    registry = parse_registry(yaml.safe_dump({"wizards": WIZARDS, "work": work}), PATH)
    again = parse_registry(yaml.safe_dump(registry.to_dict()), PATH)
    assert again.work is not None and again.work.to_dict() == config.to_dict()


def test_no_work_section_is_none() -> None:
    registry = parse_registry(yaml.safe_dump({"wizards": WIZARDS}), PATH)
    assert registry.work is None and "work" not in registry.to_dict()


def test_allowed_endpoints_default_ports_by_scheme() -> None:
    second = {**SOURCE, "forge": "github", "api_url": "https://198.51.100.7",
              "git_url": "https://198.51.100.8/acme/shop.git", "repo": "acme/shop"}
    third = {**SOURCE, "forge": "gitlab", "api_url": "http://[2001:db8::5]/api/v4",
             "git_url": "http://192.0.2.5:3000/acme/tools/shop.git", "repo": "acme/tools/shop"}
    config = load({**WORK, "sources": [SOURCE, second, third]})
    assert config is not None
    assert allowed_endpoints(config) == (("192.0.2.5", 3000), ("198.51.100.7", 443),
                                         ("198.51.100.8", 443), ("2001:db8::5", 80))


@pytest.mark.parametrize(("work", "problem"), [
    ({**WORK, "test_command": ["+/bin/sh", "-c", "id"]}, "the program '+/bin/sh' is not a "
                                                         "program name"),
    ({**WORK, "test_command": ["@sh"]}, "the program '@sh' is not a program name"),
    ({**WORK, "test_command": ["py test"]}, "the program 'py test' is not a program name"),
    ({**WORK, "test_command": ["pytest"] * 33}, "has 33 arguments; at most 32 allowed"),
    ({**WORK, "test_command": ["pytest", "x" * 300]}, "argument 2"),
    ({**WORK, "sources": [{**SOURCE, "git_url": "http://0x7f.1/acme/shop.git"}]},
     "work.sources[0].git_url: "),
    # outside attack r37: the unspecified address (a connection to it stays on the node), and
    # more hosts than the allowlist holds, passed here and failed the deploy
    ({**WORK, "sources": [{**SOURCE, "api_url": "http://0.0.0.0:3000/api/v1"}]},
     "work.sources[0].api_url: allow: 0.0.0.0 is the unspecified address"),
    ({**WORK, "sources": [{**SOURCE, "git_url": "http://[::]:3000/acme/shop.git"}]},
     "work.sources[0].git_url: allow: :: is the unspecified address"),
    ({**WORK, "sources": [{**SOURCE, "api_url": f"http://api{n}.example.org/v1",
                           "git_url": f"http://10.0.{n}.1/acme/s{n}.git", "repo": f"acme/s{n}"}
                          for n in range(17)]},
     "work.sources: allow: the forge URLs come to 34 addresses and ports"),
])
def test_validate_refuses_what_the_sandbox_policy_would_refuse(
        work: dict[str, Any], problem: str) -> None:
    """Outside attack r36 (F9): `fleet registry validate` said ok to a test command of
    systemd's `+` (full privileges) form, to more or longer arguments than the sandbox takes,
    and to addresses the sandbox's allowlist cannot hold; the deploy would then fail. The
    registry now asks the sandbox policy's own checks."""
    found = problems(work)
    assert len(found) == 1 and problem in found[0], found
    assert LINE_RE.fullmatch(found[0]), found


def test_a_forge_named_by_its_dns_name_is_accepted() -> None:
    """The sandbox pins a host name to its addresses at deploy time (deploys.sandbox), so a
    source may name its forge as operators do (``https://api.github.com``)."""
    config = load({**WORK, "sources": [{**SOURCE, "api_url": "https://api.example.org/v3",
                                        "git_url": "https://git.example.org/acme/shop.git"}]})
    assert config is not None and config.sources[0].api_url == "https://api.example.org/v3"


@pytest.mark.parametrize(("work", "expected"), [
    (with_source(forge="gogs"), "work.sources[0].forge: 'gogs' is not a forge kind (gitea, "
     "github, gitlab)"),
    (with_source(api_url="http://user:pw@192.0.2.5/api/v1"), "work.sources[0].api_url: "
     "'http://user:pw@192.0.2.5/api/v1' is not a URL of the form"),
    (with_source(api_url="ftp://192.0.2.5/api/v1"), "is not a URL of the form"),
    (with_source(git_url="http://192.0.2.5/a.git?x=1"), "work.sources[0].git_url:"),
    (with_source(git_url="http://192.0.2.5/a.git#top"), "work.sources[0].git_url:"),
    (with_source(api_url="http://192.0.2.5:70000/api"), "has port 70000; a port is 1-65535"),
    (with_source(api_url="http://999.1.1.1/api"), "which is not an IPv4 address"),
    (with_source(api_url="http://[zz::1]/api"), "work.sources[0].api_url:"),
    (with_source(api_url="http:///api"), "work.sources[0].api_url:"),
    (with_source(repo="acme/../etc"), "work.sources[0].repo: 'acme/../etc' is not a "
     "repository path"),
    (with_source(repo="-acme/shop"), "work.sources[0].repo:"),
    (with_source(repo="acme/shop/extra"), "work.sources[0].repo:"),
    (with_source(repo="acme"), "work.sources[0].repo:"),
    (with_source(label="a,b"), "work.sources[0].label: 'a,b' is not a label name"),
    (with_source(label=" fleet"), "work.sources[0].label:"),
    (with_source(label="x" * 51), "work.sources[0].label:"),
    (with_source(token="ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
     "work.sources[0].token: looks like a token value"),
    (with_source(token="glpat-abcdefghij"), "looks like a token value"),
    (with_source(token="ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"), "looks like a token value"),
    (with_source(token=12), "work.sources[0].token: 12 is not a secret name"),
    (with_source(capability_labels={"bug": "nobody"}),
     "work.sources[0].capability_labels.bug: no agent declares 'nobody'"),
    (with_source(capability_labels={"bug": "Code!"}), "is not a capability name"),
    (with_source(capability_labels=["bug"]), "work.sources[0].capability_labels: must be "
     "a mapping"),
    (with_source(extra=1), "work.sources[0].extra: unknown field"),
    ({**WORK, "max_steps": 0}, "work.max_steps: '0' is not a whole number from 1 to 200"),
    ({**WORK, "max_steps": 201}, "work.max_steps:"),
    ({**WORK, "max_steps": True}, "work.max_steps: 'True' is not a whole number"),
    ({**WORK, "max_steps": "20"}, "work.max_steps:"),
    ({**WORK, "max_steps": 2.5}, "work.max_steps:"),
    ({**WORK, "max_minutes": 241}, "work.max_minutes: '241' is not a whole number from 1 to 240"),
    ({**WORK, "test_command": []}, "work.test_command: [] is not a non-empty list of "
     "arguments"),
    ({**WORK, "test_command": "pytest -q"}, "work.test_command: is not a list of arguments"),
    ({**WORK, "test_command": ["--pytest"]}, "work.test_command: the program '--pytest' is "
     "not a program name"),
    ({**WORK, "test_command": ["pytest", ""]}, "work.test_command: argument 2"),
    ({**WORK, "test_command": ["pytest", 3]}, "work.test_command: argument 2"),
    ({**WORK, "sources": []}, "work.sources: must be a list of 1-20 sources"),
    ({**WORK, "sources": [SOURCE] * (MAX_SOURCES + 1)}, "work.sources: must be a list"),
    ({"sources": [SOURCE]}, "work.test_command: missing required field"),
    ({**WORK, "timeout": 3}, "work.timeout: unknown field"),
    ({**WORK, "intake_on": "--now"}, "work.intake_on: '--now' starts with '-'"),
    ({**WORK, "intake_on": "every tuesday"}, "work.intake_on: 'every tuesday' is not a "
     "systemd calendar expression"),
    ({**WORK, "intake_on": 10}, "work.intake_on: 10 is not a calendar expression"),
    ("yes", "work: must be a mapping"),
])
def test_refused_with_file_and_line(work: Any, expected: str) -> None:
    found = problems(work)
    assert len(found) == 1, found
    assert LINE_RE.fullmatch(found[0]), found[0]
    assert expected in found[0]


def test_duplicate_source_refused() -> None:
    twin = {**SOURCE, "api_url": "http://192.0.2.5:3000/api/v1/", "repo": "ACME/shop"}
    found = problems({**WORK, "sources": [SOURCE, twin]})
    assert len(found) == 1 and LINE_RE.fullmatch(found[0])
    assert "work.sources[1]: gitea repository 'ACME/shop'" in found[0]
    assert "is already a source (line" in found[0]


def test_control_character_is_one_line() -> None:
    found = problems(with_source(label="fle\x1bet"))
    assert len(found) == 1 and LINE_RE.fullmatch(found[0])
    assert "work.sources[0].label: 'fle\\x1bet' holds an escape character" in found[0]


# Property tests ---------------------------------------------------------------------------

hosts = st.one_of(  # addresses of a server, and DNS names (pinned to addresses at deploy time)
    st.ip_addresses(v=4).filter(lambda address: not address.is_unspecified).map(str),
    st.ip_addresses(v=6).filter(lambda address: not address.is_unspecified).map(
        lambda address: f"[{address}]"),
    st.from_regex(HOSTNAME_RE, fullmatch=True).filter(lambda name: not host_problem(name)))
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]), hosts,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}")),
    st.from_regex(r"(/[A-Za-z0-9._~-]{0,12}){0,3}", fullmatch=True))
_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,15}", fullmatch=True)
labels = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _:./-]{0,20}[A-Za-z0-9]", fullmatch=True)
sources = st.builds(
    lambda forge, api, git, owner, name, label, token, caps: {
        "forge": forge, "api_url": api, "git_url": git, "repo": f"{owner}/{name}",
        "label": label, "token": token, "capability_labels": caps},
    st.sampled_from(["gitea", "github", "gitlab"]), urls, urls, _segment, _segment, labels,
    st.from_regex(r"[A-Z][A-Z0-9]{0,8}(_[A-Z0-9]{1,8}){0,3}", fullmatch=True),
    st.dictionaries(labels, st.sampled_from(["code", "docs"]), max_size=3))
works = st.builds(
    lambda command, steps, minutes, items, on: {"test_command": command, "max_steps": steps,
                                                "max_minutes": minutes, "sources": items,
                                                **({"intake_on": on} if on else {})},
    st.tuples(st.from_regex(r"[A-Za-z0-9_./][A-Za-z0-9_./+-]{0,20}", fullmatch=True),
              st.lists(st.from_regex(r"[A-Za-z0-9_./=:+][A-Za-z0-9_./=:+ -]{0,20}",
                                     fullmatch=True), max_size=5)).map(
        lambda parts: [parts[0], *parts[1]]),
    st.integers(1, 200), st.integers(1, 240),
    st.lists(sources, min_size=1, max_size=4, unique_by=lambda s: (s["forge"], s["api_url"],
                                                                   s["repo"].lower())),
    st.sampled_from(["", "hourly", "*:0/5", "Mon..Fri *-*-* 02:00:00"]))

OPTION_OR_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@settings(max_examples=150, deadline=None)
@given(works)
def test_accepted_sections_round_trip_and_are_clean(work: dict[str, Any]) -> None:
    try:
        config = load(work)
    except RegistryError as exc:  # a generated duplicate (api_url spelt two ways): one line
        assert all(LINE_RE.fullmatch(line) for line in exc.problems), exc.problems
        assert all("is already a source" in line for line in exc.problems)
        return
    assert config is not None
    assert _same(config, work)
    again = load(config.to_dict())
    assert again is not None and again.to_dict() == config.to_dict()
    assert not config.test_command[0].startswith("-")
    for source in config.sources:
        for value in (source.api_url, source.git_url, source.repo, source.label, source.token):
            assert not OPTION_OR_CONTROL.search(value) and not value.startswith("-")
        assert "@" not in source.api_url and "?" not in source.git_url
    for host, port in allowed_endpoints(config):
        assert 1 <= port <= 65535 and host and not host.startswith("[")


def _same(config: WorkConfig, work: dict[str, Any]) -> bool:
    """``config`` holds ``work`` (an empty capability_labels mapping is left out; intake's
    calendar is filled in)."""
    expected = {"intake_on": "*:0/10", **copy.deepcopy(work)}
    for item in expected["sources"]:
        if not item["capability_labels"]:
            del item["capability_labels"]
    return config.to_dict() == expected


malformed = st.one_of(
    st.text(max_size=30), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30).map(lambda text: "-" + text),
    st.sampled_from(["١٢", "²", "http://a@b/", "x\x00y", "a\u2028b", "1e3", "0x10"]))
SOURCE_KEYS = ("forge", "api_url", "git_url", "repo", "label", "token", "capability_labels")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from((*SOURCE_KEYS, "test_command", "max_steps", "max_minutes")), malformed)
def test_malformed_values_give_one_line_never_a_traceback(key: str, value: Any) -> None:
    work = copy.deepcopy(WORK)
    if key in SOURCE_KEYS:
        work["sources"][0][key] = value
    else:
        work[key] = value
    try:
        load(work)
    except RegistryError as exc:
        # one line per refused string: a scalar is one line; a list or mapping one per string
        assert len(exc.problems) == 1 or isinstance(value, list | dict), exc.problems
        assert all(LINE_RE.fullmatch(line) or re.fullmatch(r"registry\.yaml:\d+: .+", line)
                   for line in exc.problems), exc.problems
        return
    # accepted: only a value that is valid for the field
    assert key not in ("max_steps", "max_minutes") or (
        isinstance(value, int) and not isinstance(value, bool))


def test_registry_example_validates_when_uncommented(repo: Path, tmp_path: Path) -> None:
    """The commented ``work:`` example in registry.yaml is a valid section for that fleet."""
    text = (repo / "registry.yaml").read_text()
    lines = [line[2:] for line in text.splitlines()
             if line.startswith("# work:") or line.startswith("#   ")]
    assert lines and lines[0] == "work:"
    config = parse_registry(text + "\n".join(lines) + "\n", tmp_path / "registry.yaml").work
    assert config is not None and config.sources[0].forge == "gitea"
    assert allowed_endpoints(config) == (("192.0.2.5", 3000),)
