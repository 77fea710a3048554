"""The 50-slot simulation: each algorithm finds the backend's capacity and lets go after.

A backend with 50 workers and 10 ms per call (flat latency up to 50 in
flight, then queueing) under Poisson load stepped 0.5x -> 2x -> 0.5x of its
capacity (5,000 calls/s), in fake time (see limit_sim.py). For each
algorithm, in its default configuration unless said otherwise:

- within 10 s of the step to 2x, the limit is within +-20% of 50 and stays
  there for the rest of the 12 s phase;
- at 2x, goodput is >= 90% of capacity and p99 latency <= 2x the no-load
  latency (20 ms);
- once the load is back at 0.5x, fewer than 1% of calls are rejected.

AIMD is loss-based: a backend that only queues gives it no loss unless its
`timeout` is set near the latency one accepts, so it is run against a
backend that sheds (503 at once when 5 calls are queued) and, separately,
with `timeout=0.011` against the queueing one. With its default 5 s timeout
and no shedding it climbs to `max_limit` (200): see
test_aimd_without_a_loss_signal_climbs_to_its_max.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from resilience import AIMDLimit, ConcurrencyLimit, Gradient2Limit, LimitAlgorithm, VegasLimit
from resilience.testing import FakeClock
from tests.policies.limit_sim import LimitGuard, Phase, Result, simulate

PHASES = [Phase(0.5, 2), Phase(2.0, 12), Phase(0.5, 4)]
STEP = 1  # the 2x phase


def run(algorithm: LimitAlgorithm, **options: Any) -> Result:
    clock = FakeClock()
    guard = LimitGuard(ConcurrencyLimit(algorithm, clock=clock))
    return simulate(guard, clock, PHASES, **options)


CASES = [
    pytest.param(lambda: AIMDLimit(), {"shed_queue": 5}, id="aimd-shedding-backend"),
    pytest.param(lambda: AIMDLimit(timeout=0.011), {}, id="aimd-timeout-11ms"),
    pytest.param(lambda: Gradient2Limit(), {}, id="gradient2"),
    pytest.param(lambda: VegasLimit(rng=random.Random(7)), {}, id="vegas"),
]


@pytest.mark.parametrize(("algorithm", "options"), CASES)
def test_the_limit_settles_near_capacity_and_lets_go_after(
    algorithm: Any, options: dict[str, Any]
) -> None:
    """Settles in [40, 60] within 10 s at 2x; goodput >= 90%, p99 <= 20 ms; < 1% rejected after."""
    result = run(algorithm(), **options)
    settle = result.settle_time(STEP, 40, 60)
    low, high = result.limit_range(STEP, after=10)
    assert settle is not None, (low, high)
    assert settle <= 10, settle
    assert result.goodput(STEP, after=2) >= 0.9
    assert result.phases[STEP].p99() <= 2 * result.no_load_latency
    assert result.phases[2].rejected_ratio < 0.01


def test_aimd_without_a_loss_signal_climbs_to_its_max() -> None:
    """Honest limit of a loss-based algorithm: queueing alone is no signal with a 5 s timeout."""
    result = run(AIMDLimit())
    low, high = result.limit_range(STEP, after=6)
    assert low > 60  # never settles: one more every window the limit is used
    assert high > 2 * 50
    assert result.phases[STEP].p99() > 2 * result.no_load_latency  # the backend's queue grew


def test_a_fixed_bulkhead_is_either_too_small_or_too_large() -> None:
    """The same backend behind fixed limits: 20 wastes capacity, 100 lets the queue grow."""
    from resilience import Bulkhead
    from tests.policies.limit_sim import BulkheadGuard

    results = {}
    for size in (20, 100):
        clock = FakeClock()
        results[size] = simulate(BulkheadGuard(Bulkhead(size, clock=clock)), clock, PHASES)
    assert results[20].goodput(STEP, after=2) < 0.5
    assert results[100].phases[STEP].p99() > 1.9 * results[100].no_load_latency


def test_delay_based_limits_take_an_overloaded_start_as_normal() -> None:
    """Honest limit: started above capacity under 2x load, they never see the no-load latency.

    Gradient2's long-term average and Vegas's no-load RTT are learnt from the
    first calls, already queued; AIMD with a timeout has an absolute yardstick.
    """
    phases = [Phase(2.0, 6)]
    ends = {}
    for name, algorithm in (
        ("gradient2", Gradient2Limit(initial_limit=150)),
        ("vegas", VegasLimit(initial_limit=150, rng=random.Random(7))),
        ("aimd", AIMDLimit(initial_limit=150, timeout=0.011)),
    ):
        clock = FakeClock()
        result = simulate(LimitGuard(ConcurrencyLimit(algorithm, clock=clock)), clock, phases)
        ends[name] = result.limit_range(0, after=4)
    assert ends["gradient2"][0] > 120
    assert ends["vegas"][0] > 120
    assert 40 <= ends["aimd"][0] <= ends["aimd"][1] <= 60
