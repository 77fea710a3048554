from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import CountWindow, TimeWindow

# An outcome: (failed, slow, taken lock-free). A lock-free outcome is a success
# that only took a number (the breaker's fast path); the window never sees it.
OUTCOMES = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=0, max_size=200
)


@given(size=st.integers(1, 20), outcomes=OUTCOMES)
def test_count_window_matches_the_last_n_outcomes(size: int, outcomes) -> None:
    """After every outcome, the totals equal those of a naive list of the last N."""
    window = CountWindow(size)._create()
    history: list[tuple[bool, bool]] = []
    for number, (failed, slow, lockfree) in enumerate(outcomes):
        if lockfree:
            failed = slow = False
            window.refresh(number + 1, 0.0)
        else:
            window.record(number, failed, slow, 0.0)
        history.append((failed, slow))
        last = history[-size:]
        assert window.calls == len(last)
        assert window.failures == sum(f for f, _ in last)
        assert window.slow == sum(s for _, s in last)
    window.reset()
    assert (window.calls, window.failures, window.slow) == (0, 0, 0)


@given(
    seconds=st.sampled_from([1.0, 2.5, 10.0, 60.0]),
    buckets=st.integers(1, 12),
    steps=st.lists(
        st.tuples(st.floats(0, 30, allow_nan=False), st.booleans(), st.booleans()),
        max_size=150,
    ),
)
def test_time_window_matches_a_naive_bucketed_model(seconds, buckets, steps) -> None:
    """The ring agrees with a list of every outcome filtered by bucket age."""
    spec = TimeWindow(seconds=seconds, buckets=buckets)
    window = spec._create()
    width = seconds / buckets
    now = 0.0
    history: list[tuple[float, bool, bool]] = []
    for number, (advance, failed, slow) in enumerate(steps):
        now += advance
        window.record(number, failed, slow, now)
        history.append((now, failed, slow))
        current = int(now // width)
        live = [(f, s) for t, f, s in history if int(t // width) > current - buckets]
        assert window.calls == len(live)
        assert window.failures == sum(f for f, _ in live)
        assert window.slow == sum(s for _, s in live)
    # Reading later ages everything out once the window has passed.
    window.refresh(len(steps), now + seconds + width)
    assert (window.calls, window.failures, window.slow) == (0, 0, 0)


def test_time_window_memory_does_not_grow_with_calls() -> None:
    """A million outcomes in one bucket still take one bucket's worth of memory."""
    window = TimeWindow(seconds=10)._create()
    for number in range(10_000):
        window.record(number, number % 3 == 0, False, 1.0)
    assert window.calls == 10_000
    assert len(window._bucket_calls) == 10


def test_default_time_buckets() -> None:
    """One bucket per second, clamped to 10..120."""
    assert TimeWindow(seconds=60).buckets == 60
    assert TimeWindow(seconds=2).buckets == 10
    assert TimeWindow(seconds=3600).buckets == 120


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: CountWindow(0), ValueError, "size="),
        (lambda: CountWindow(2.5), TypeError, "size="),
        (lambda: CountWindow(True), TypeError, "size="),
        (lambda: TimeWindow(seconds=0), ValueError, "seconds="),
        (lambda: TimeWindow(seconds=math.inf), ValueError, "seconds="),
        (lambda: TimeWindow(seconds="60"), TypeError, "seconds="),
        (lambda: TimeWindow(seconds=60, buckets=0), ValueError, "buckets="),
    ],
)
def test_bad_windows_are_rejected(build, error, match) -> None:
    """Window specs validate at construction and name the parameter."""
    with pytest.raises(error, match=match):
        build()


def test_window_specs_are_values() -> None:
    """Specs compare and hash by configuration and have a readable repr."""
    assert CountWindow(10) == CountWindow(10)
    assert CountWindow(10) != CountWindow(11)
    assert TimeWindow(seconds=60) == TimeWindow(seconds=60.0)
    assert len({CountWindow(5), CountWindow(5)}) == 1
    assert repr(TimeWindow(seconds=5, buckets=5)) == "TimeWindow(seconds=5.0, buckets=5)"
