"""The Installation sections of README.md and docs/index.md match pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def installation(page: str) -> str:
    text = (ROOT / page).read_text()
    match = re.search(r"^## Installation\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert match, f"{page} has no Installation section"
    return match.group(1)


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_extras_listed_are_exactly_the_projects(page: str) -> None:
    """Every extra in pyproject.toml is in the table, with the packages it installs."""
    section = installation(page)
    rows = dict(re.findall(r"^\| `resilience\[(\w+)\]` \|.*\| ([^|]+) \|$", section, re.MULTILINE))
    extras = PROJECT["optional-dependencies"]
    assert set(rows) == set(extras)
    for extra, requirements in extras.items():
        names = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in requirements}
        assert {name.strip() for name in rows[extra].split(",")} == names, extra


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_python_versions_and_dependencies_match(page: str) -> None:
    """The Python versions named are the classifiers', the dependencies the project's."""
    section = installation(page)
    classifiers = {
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert set(re.findall(r"3\.\d+", section.split("\n\n")[0])) == classifiers
    assert PROJECT["requires-python"] == f">={min(classifiers, key=lambda v: int(v[2:]))}"
    names = {re.split(r"[<>=]", dependency)[0] for dependency in PROJECT["dependencies"]}
    assert {name.replace("-", "") for name in names} <= {
        word.replace("-", "") for word in re.findall(r"[\w-]+", section)
    }
