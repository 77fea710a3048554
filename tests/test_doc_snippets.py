"""Every Python snippet in the README and the docs at least compiles (no rotting syntax)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def snippets() -> list[tuple[str, str]]:
    found = []
    for path in FILES:
        for number, match in enumerate(BLOCK.finditer(path.read_text()), start=1):
            found.append((f"{path.relative_to(ROOT)}#{number}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), snippets(), ids=[where for where, _ in snippets()])
def test_snippet_compiles(where: str, code: str) -> None:
    """The snippet is valid Python (it is not run: most need services or names from context)."""
    # Top-level `await` is allowed, as in an async REPL: snippets show one call.
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_there_are_snippets() -> None:
    """The collection itself works (a regex typo would pass every test above)."""
    assert len(snippets()) > 20
