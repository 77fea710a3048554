from __future__ import annotations

import math

import pytest

from resilience._validate import check_int, check_seconds, check_string


def test_check_seconds_accepts_numbers() -> None:
    """Ints and floats become float seconds; zero and infinity only when allowed."""
    assert check_seconds(2, "x") == 2.0
    assert check_seconds(0, "x", allow_zero=True) == 0.0
    assert check_seconds(math.inf, "x", allow_inf=True) == math.inf


@pytest.mark.parametrize(
    ("value", "kwargs", "error"),
    [
        (0, {}, ValueError),
        (-1, {"allow_zero": True}, ValueError),
        (math.nan, {"allow_inf": True}, ValueError),
        (math.inf, {}, ValueError),
        (True, {}, TypeError),
        ("1", {}, TypeError),
        (None, {}, TypeError),
    ],
)
def test_check_seconds_rejects(value, kwargs, error) -> None:
    """Bad durations are errors that name the parameter, never a silent default."""
    with pytest.raises(error, match="open_duration="):
        check_seconds(value, "open_duration", **kwargs)


def test_check_int() -> None:
    """Counts must be ints at or above their minimum; bools are not counts."""
    assert check_int(3, "attempts") == 3
    assert check_int(0, "n", minimum=0) == 0
    with pytest.raises(ValueError, match="attempts= must be >= 1"):
        check_int(0, "attempts")
    with pytest.raises(TypeError, match="attempts="):
        check_int(True, "attempts")
    with pytest.raises(TypeError, match="attempts="):
        check_int(2.0, "attempts")


def test_check_string() -> None:
    """Names are non-empty strings."""
    assert check_string("payments", "name") == "payments"
    with pytest.raises(ValueError, match="name="):
        check_string("  ", "name")
    with pytest.raises(TypeError, match="name="):
        check_string(None, "name")
