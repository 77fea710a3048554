from __future__ import annotations

import datetime
import math
import threading

import pytest

from resilience import RetryBudget
from resilience.testing import FakeClock


def test_floor_allows_min_per_second_times_window_without_traffic() -> None:
    """With no requests, min_per_second * window retries are allowed, then no more."""
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=5, clock=FakeClock())
    assert [budget.try_withdraw() for _ in range(6)] == [True] * 5 + [False]
    assert budget.exhausted == 1


def test_retries_scale_with_traffic() -> None:
    """100 requests at ratio 0.2 add 20 retries to the floor."""
    budget = RetryBudget(ratio=0.2, min_per_second=0.2, window=10, clock=FakeClock())
    for _ in range(100):
        budget.deposit()
    assert budget.available() == pytest.approx(22)
    allowed = sum(budget.try_withdraw() for _ in range(30))
    assert allowed == 22


def test_the_window_slides() -> None:
    """Retries and requests older than the window stop counting."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=4, buckets=4, clock=clock)
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
    clock.advance(4)
    assert budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    clock.advance(2)
    assert budget.metrics() == {"requests": 10, "exhausted": 1}


def test_requests_age_out() -> None:
    """Deposits from more than a window ago no longer buy retries."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0.1, window=2, buckets=2, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert budget.available() == pytest.approx(10.2)
    clock.advance(3)
    assert budget.available() == pytest.approx(0.2)


def test_concurrent_withdrawals_never_exceed_the_budget() -> None:
    """16 threads racing for retries get exactly what the budget allows."""
    budget = RetryBudget(ratio=0.5, min_per_second=1, window=10, clock=FakeClock())
    for _ in range(40):
        budget.deposit()
    barrier = threading.Barrier(16, timeout=30)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(10):
            ok = budget.try_withdraw()
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(granted) == 30  # 0.5 * 40 + 1 * 10
    assert budget.exhausted == 160 - 30


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": -0.1}, ValueError, "ratio="),
        ({"ratio": 2}, ValueError, "ratio="),
        ({"ratio": 1.01}, ValueError, "ratio="),
        ({"ratio": math.nan}, ValueError, "ratio="),
        ({"ratio": math.inf}, ValueError, "ratio="),
        ({"ratio": True}, TypeError, "ratio="),
        ({"ratio": "20%"}, TypeError, "ratio="),
        ({"ratio": None}, TypeError, "ratio="),
        ({"min_per_second": -1}, ValueError, "min_per_second="),
        ({"min_per_second": math.nan}, ValueError, "min_per_second="),
        ({"min_per_second": math.inf}, ValueError, "min_per_second="),
        ({"min_per_second": True}, TypeError, "min_per_second="),
        ({"min_per_second": "10"}, TypeError, "min_per_second="),
        ({"min_per_second": datetime.timedelta(seconds=1)}, TypeError, "min_per_second="),
        ({"ratio": 0, "min_per_second": 0}, ValueError, "ratio=0 and min_per_second=0"),
        ({"ratio": 0, "min_per_second": 0.05, "window": 10}, ValueError, "min_per_second="),
        ({"window": 0}, ValueError, "window="),
        ({"window": -1}, ValueError, "window="),
        ({"window": math.nan}, ValueError, "window="),
        ({"window": math.inf}, ValueError, "window="),
        ({"window": True}, TypeError, "window="),
        ({"window": "10s"}, TypeError, "window="),
        ({"buckets": 0}, ValueError, "buckets="),
        ({"buckets": 2.5}, TypeError, "buckets="),
        ({"buckets": True}, TypeError, "buckets="),
        ({"buckets": "10"}, TypeError, "buckets="),
        ({"name": ""}, ValueError, "name="),
        ({"name": 3}, TypeError, "name="),
        ({"clock": "now"}, TypeError, "clock="),
    ],
)
def test_bad_budget(kwargs, error, match) -> None:
    """Budget parameters are validated at construction, naming the parameter."""
    with pytest.raises(error, match=match):
        RetryBudget(**kwargs)


def test_budget_edges_and_timedeltas() -> None:
    """A ratio may be 0 or 1; window= takes a timedelta."""
    assert RetryBudget(ratio=1).ratio == 1.0
    assert RetryBudget(ratio=0, min_per_second=0.1, window=10).ratio == 0.0
    assert RetryBudget(min_per_second=0).min_per_second == 0.0
    assert RetryBudget(window=datetime.timedelta(seconds=30)).window == 30.0
