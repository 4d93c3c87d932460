"""Every compatibility path (code reading what an earlier release left behind) names the
release it goes away in, is listed in docs/design.md, and is gone by that release."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"#\s*compatibility: until (\S+): (.+)$")
LISTED = re.compile(r"- until (\S+): (.+?)(?: \(.*\))?$")


def version(text: str) -> tuple[int, ...]:
    assert re.fullmatch(r"\d+\.\d+\.\d+", text), text
    return tuple(int(part) for part in text.split("."))


def markers() -> dict[str, list[tuple[str, int, str]]]:
    """Marker text → [(path, line, version)] over the shipped and controller code."""
    found: dict[str, list[tuple[str, int, str]]] = {}
    for path in sorted([*REPO.glob("fleet/**/*.py"), *REPO.glob("bus/**/*.py"),
                        *REPO.glob("deploys/**/*.py")]):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if match := MARKER.search(line):
                found.setdefault(match[2].strip(), []).append(
                    (str(path.relative_to(REPO)), number, match[1]))
    return found


def listed() -> dict[str, str]:
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## Compatibility paths", 1)[1].split("\n## ", 1)[0]
    return {match[2]: match[1] for line in section.splitlines()
            if (match := LISTED.fullmatch(line.strip()))}


def test_every_compatibility_path_goes_away_in_a_later_release() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    found = markers()
    assert found, "no compatibility markers found: has the marker format changed?"
    due = [f"{path}:{line} ({what}) until {until}" for what, places in found.items()
           for path, line, until in places if version(until) <= version(project)]
    assert not due, f"remove these compatibility paths in {project}: {due}"


def test_the_design_doc_lists_exactly_the_marked_paths() -> None:
    found = {what: {until for _, _, until in places} for what, places in markers().items()}
    assert {what: {until} for what, until in listed().items()} == found

