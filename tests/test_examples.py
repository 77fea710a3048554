from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# What each example must print, so that an example that silently stops
# demonstrating its point fails here.
EXPECTED = {
    "custom_policy.py": [
        "ORDERS",
        "stnemyap",
        "outer saw [0.25, 1.5] inner saw [0.25, 1.5]",
        "time asked to wait: [0.25, 1.5] fake time now: 1.75",
    ],
}


def test_every_example_has_expectations() -> None:
    """A new example must say here what it prints."""
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    """Each example runs to completion and prints what its docs promise."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED[name]
