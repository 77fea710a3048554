from __future__ import annotations

import datetime
import email.utils
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import Backoff, parse_retry_after
from resilience._backoff import retry_after_of


@given(attempt=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_full_jitter_stays_under_the_capped_exponential(attempt: int, seed: int) -> None:
    """uniform(0, min(maximum, initial * multiplier ** (n - 1))), never above the cap."""
    backoff = Backoff(initial=0.1, maximum=5.0, rng=random.Random(seed))
    ceiling = min(5.0, 0.1 * 2 ** (attempt - 1))
    assert backoff.ceiling(attempt) == pytest.approx(ceiling)
    assert 0 <= backoff(attempt) <= ceiling


def test_equal_and_no_jitter() -> None:
    """Equal jitter waits at least half the ceiling; no jitter waits exactly it."""
    equal = Backoff(initial=1, maximum=8, jitter="equal", rng=random.Random(1))
    assert all(4 <= equal(4) <= 8 for _ in range(100))
    none = Backoff(initial=1, maximum=8, jitter="none")
    assert [none(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]


def _bad_seconds(param: str) -> list[tuple[dict[str, object], type[Exception], str]]:
    return [
        ({param: 0}, ValueError, f"{param}="),
        ({param: -1}, ValueError, f"{param}="),
        ({param: math.nan}, ValueError, f"{param}="),
        ({param: math.inf}, ValueError, f"{param}="),
        ({param: datetime.timedelta(0)}, ValueError, f"{param}="),
        ({param: True}, TypeError, f"{param}="),
        ({param: "1"}, TypeError, f"{param}="),
        ({param: None}, TypeError, f"{param}="),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        *_bad_seconds("initial"),
        *_bad_seconds("maximum"),
        ({"initial": 2, "maximum": 1}, ValueError, "maximum="),
        ({"initial": datetime.timedelta(seconds=2), "maximum": 1}, ValueError, "maximum="),
        ({"multiplier": 0.5}, ValueError, "multiplier="),
        ({"multiplier": 0}, ValueError, "multiplier="),
        ({"multiplier": -2}, ValueError, "multiplier="),
        ({"multiplier": math.nan}, ValueError, "multiplier="),
        ({"multiplier": math.inf}, ValueError, "multiplier="),
        ({"multiplier": True}, TypeError, "multiplier="),
        ({"multiplier": "2"}, TypeError, "multiplier="),
        ({"multiplier": None}, TypeError, "multiplier="),
        ({"jitter": "decorrelated"}, ValueError, "jitter="),
        ({"jitter": "FULL"}, ValueError, "jitter="),
        ({"jitter": 1}, TypeError, "jitter="),
        ({"jitter": None}, TypeError, "jitter="),
        ({"jitter": True}, TypeError, "jitter="),
        ({"rng": 42}, TypeError, "rng="),
        ({"rng": random}, TypeError, "rng="),
    ],
)
def test_bad_backoff(kwargs, error, match) -> None:
    """Every Backoff argument is validated; the message names the parameter."""
    with pytest.raises(error, match=match):
        Backoff(**kwargs)


def test_backoff_takes_timedeltas() -> None:
    """initial= and maximum= accept a datetime.timedelta."""
    backoff = Backoff(
        initial=datetime.timedelta(milliseconds=500), maximum=datetime.timedelta(seconds=2)
    )
    assert (backoff.initial, backoff.maximum) == (0.5, 2.0)


@pytest.mark.parametrize(
    ("attempt", "error"),
    [(0, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError), ("1", TypeError)],
)
def test_bad_attempt_number(attempt, error) -> None:
    """A Backoff called with something other than an attempt number >= 1 says so."""
    backoff = Backoff()
    with pytest.raises(error, match="attempt="):
        backoff(attempt)
    with pytest.raises(error, match="attempt="):
        backoff.ceiling(attempt)


def test_parse_retry_after_seconds_and_dates() -> None:
    """delay-seconds and HTTP-dates parse; past dates give 0; garbage gives None."""
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after(b"3") == 3.0
    assert parse_retry_after(2.5) == 2.5
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(30)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    for garbage in ("-1", "soon", "", "1.5e3x", None, True, float("nan"), -4, object()):
        assert parse_retry_after(garbage) is None


def test_retry_after_of_reads_attributes_and_headers() -> None:
    """An exception's retry_after, or a Retry-After header on it or its response."""

    class WithAttribute(Exception):
        retry_after = 4.0

    class Response:
        headers = {"Retry-After": "9"}

    class StatusError(Exception):
        response = Response()

    class Broken:
        @property
        def headers(self) -> dict[str, str]:
            raise RuntimeError("no headers for you")

    assert retry_after_of(WithAttribute()) == 4.0
    assert retry_after_of(Response()) == 9.0
    assert retry_after_of(StatusError()) == 9.0
    assert retry_after_of(ValueError()) is None
    assert retry_after_of(Broken()) is None
    assert retry_after_of(None) is None
