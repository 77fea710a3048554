"""Each limit algorithm as a pure function of (limit, samples), against hand-computed sequences.

The expected numbers are worked out by hand from the published formulas
(Netflix concurrency-limits AIMDLimit, Gradient2Limit, VegasLimit; see the
docstrings), step by step in the comments, not taken from the implementation.
"""

from __future__ import annotations

import datetime
import math
import random
from typing import Any

import pytest

from resilience import AIMDLimit, Gradient2Limit, LimitAlgorithm, VegasLimit
from resilience._limit_algorithms import log10_root

Sample = tuple[float, int, bool]  # (rtt seconds, in flight, dropped)


def run(algorithm: LimitAlgorithm, samples: list[Sample]) -> list[float]:
    """Feed the samples one by one, starting from the initial limit; return each next limit."""
    limit = float(algorithm.initial_limit)
    limits = []
    for rtt, in_flight, dropped in samples:
        limit = algorithm.update(limit, rtt, in_flight, dropped)
        limits.append(limit)
    return limits


# -- AIMD -----------------------------------------------------------------------------


def test_aimd_sequence() -> None:
    """L+1 while in_flight*2 >= L; int(L*0.9) on a drop or an RTT over the timeout."""
    aimd = AIMDLimit(initial_limit=10, timeout=5.0)
    samples: list[Sample] = [
        (0.01, 5, False),  # 5*2 = 10 >= 10: 10 + 1 = 11
        (0.01, 4, False),  # 4*2 = 8 < 11: stays 11
        (0.01, 6, False),  # 12 >= 11: 12
        (0.01, 6, True),  # drop: int(12 * 0.9) = int(10.8) = 10
        (6.0, 10, False),  # 6 s > 5 s timeout: int(10 * 0.9) = 9
        (0.01, 9, False),  # 18 >= 9: 10
        (5.0, 9, False),  # exactly the timeout is not over it: 18 >= 10: 11
    ]
    assert run(aimd, samples) == [11, 11, 12, 10, 9, 10, 11]


def test_aimd_clamps_and_backoff_ratio() -> None:
    """The result stays within [min_limit, max_limit]; backoff_ratio is the decrease factor."""
    low = AIMDLimit(initial_limit=1, min_limit=1, max_limit=3)
    # int(1 * 0.9) = 0 -> min 1; then +1, +1, +1 -> 2, 3, then 4 -> max 3
    assert run(low, [(0.01, 1, True), (0.01, 1, False), (0.01, 2, False), (0.01, 3, False)]) == [
        1,
        2,
        3,
        3,
    ]
    half = AIMDLimit(initial_limit=40, min_limit=15, backoff_ratio=0.5)
    # int(40 * 0.5) = 20; int(20 * 0.5) = 10 -> min 15
    assert run(half, [(0.01, 1, True), (0.01, 1, True)]) == [20, 15]


# -- Gradient2 ------------------------------------------------------------------------


def test_gradient2_sequence() -> None:
    """Warm-up mean, EMA, gradient clamp, queue allowance, smoothing, decay, app-limited, drops."""
    # long_window=3: EMA factor f = 2 / (3 + 1) = 0.5 after the 10 warm-up samples.
    g = Gradient2Limit(initial_limit=20, min_limit=1, max_limit=200, long_window=3)
    expected = []
    limit = 20.0
    for _ in range(10):
        # long = mean of equal RTTs = 0.1; gradient = min(1, 0.1/0.1) = 1
        # new = L*1 + 4; L = 0.8*L + 0.2*(L + 4) = L + 0.8
        limit += 0.8
        expected.append(limit)
    samples: list[Sample] = [(0.1, 30, False)] * 10
    # L = 28.0 now.
    samples.append((0.2, 30, False))
    # long = 0.1*0.5 + 0.2*0.5 = 0.15; gradient = 0.15/0.2 = 0.75
    # new = 28*0.75 + 4 = 25; L = 28*0.8 + 25*0.2 = 22.4 + 5 = 27.4
    expected.append(27.4)
    samples.append((0.05, 30, False))
    # long = 0.15*0.5 + 0.05*0.5 = 0.1; long/rtt = 2, not > 2: no decay
    # gradient = min(1, 2) = 1; L = 27.4 + 0.8 = 28.2
    expected.append(28.2)
    samples.append((0.02, 30, False))
    # long = 0.1*0.5 + 0.02*0.5 = 0.06; 0.06/0.02 = 3 > 2: stored long *= 0.95 -> 0.057
    # (this step's gradient uses 0.06): min(1, 3) = 1; L = 28.2 + 0.8 = 29.0
    expected.append(29.0)
    samples.append((0.02, 10, False))
    # long = 0.057*0.5 + 0.02*0.5 = 0.0385; 10 < 29/2: app-limited, L stays 29.0
    expected.append(29.0)
    samples.append((0.001, 5, True))
    # drop: gradient 0.5 (even app-limited), long untouched
    # new = 29*0.5 + 4 = 18.5; L = 29*0.8 + 18.5*0.2 = 23.2 + 3.7 = 26.9
    expected.append(26.9)
    samples.append((1.0, 30, False))
    # long = 0.0385*0.5 + 1.0*0.5 = 0.51925; gradient = max(0.5, 0.51925) = 0.51925
    # new = 26.9*0.51925 + 4 = 17.967825; L = 26.9*0.8 + 17.967825*0.2 = 25.113565
    expected.append(25.113565)
    assert run(g, samples) == pytest.approx(expected)
    assert g.long_rtt == pytest.approx(0.51925)


def test_gradient2_gradient_floor_tolerance_and_bounds() -> None:
    """The gradient never goes below 0.5; rtt_tolerance scales it; min/max clamp the limit."""
    g = Gradient2Limit(initial_limit=100, min_limit=1, max_limit=200, smoothing=1.0)
    # first sample: long = 0.01 (mean of one); gradient = 1 -> new = 100 + 4 = 104 (smoothing 1)
    # second: long = (0.01 + 1.0)/2 = 0.505; 0.505/1.0 -> gradient 0.505: 104*0.505 + 4 = 56.52
    # third: long = (0.01 + 1 + 10)/3 = 3.67; gradient max(0.5, 0.367) = 0.5: 56.52*0.5 + 4 = 32.26
    assert run(g, [(0.01, 100, False), (1.0, 100, False), (10.0, 100, False)]) == pytest.approx(
        [104, 56.52, 32.26]
    )
    tolerant = Gradient2Limit(initial_limit=100, min_limit=1, smoothing=1.0, rtt_tolerance=2.0)
    # long = (0.01 + 0.015)/2 = 0.0125 at the second sample: 2 * 0.0125/0.015 = 1.67 -> 1
    # first: 100 + 4 = 104; second: 104 + 4 = 108
    assert run(tolerant, [(0.01, 100, False), (0.015, 100, False)]) == pytest.approx([104, 108])
    capped = Gradient2Limit(initial_limit=199, max_limit=200, smoothing=1.0)
    assert run(capped, [(0.01, 199, False)]) == [200]  # 199 + 4 = 203 -> 200
    floored = Gradient2Limit(initial_limit=20, min_limit=20, smoothing=1.0)
    assert run(floored, [(0.01, 20, True)]) == [20]  # 20*0.5 + 4 = 14 -> 20


# -- Vegas ----------------------------------------------------------------------------


class FixedJitter(random.Random):
    """A Random whose uniform() always returns `value` (the probe jitter)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value


def test_log10_root() -> None:
    """max(1, int(log10 L)) below 1000, int(sqrt L) from 1000 (the source's lookup)."""
    assert [log10_root(n) for n in (0, 1, 9, 10, 99, 100, 999, 1000, 1024)] == [
        1,
        1,
        1,
        1,
        1,
        2,
        2,
        31,
        32,
    ]


def test_vegas_sequence() -> None:
    """Queue estimate from the no-load RTT; +beta, +log10, -log10 or hold; drops; app-limited."""
    # L = 20..99: log10_root = 1, so threshold 1, alpha 3, beta 6.
    vegas = VegasLimit(initial_limit=20, rng=FixedJitter(0.5))  # probe after 0.5*30*L samples
    samples: list[Sample] = [
        (0.010, 10, False),  # first RTT: no-load RTT = 0.010, L stays 20
        (0.010, 10, False),  # queue = ceil(20*(1 - 1)) = 0 <= 1: 20 + 6 = 26
        (0.012, 13, False),  # queue = ceil(26*(1 - 10/12)) = ceil(4.33) = 5: 3 <= 5 <= 6, hold
        (0.020, 13, False),  # queue = ceil(26*0.5) = 13 > 6: 26 - 1 = 25
        (0.011, 13, False),  # queue = ceil(25*(1 - 10/11)) = ceil(2.27) = 3: not < 3, hold
        (0.0105, 13, False),  # queue = ceil(25*(1 - 10/10.5)) = ceil(1.19) = 2 < 3: 25 + 1 = 26
        (0.010, 12, False),  # 12*2 = 24 < 26: app-limited, hold
        (0.001, 1, True),  # drop: 26 - 1 = 25 (a fast drop is no no-load RTT)
        (0.008, 20, False),  # 0.008 < 0.010: the new no-load RTT, hold
        (0.008, 20, False),  # queue 0: 25 + 6 = 31
    ]
    assert run(vegas, samples) == [20, 26, 26, 25, 25, 26, 26, 25, 25, 31]
    assert vegas.rtt_noload == 0.008


def test_vegas_steps_grow_with_log10_and_smoothing() -> None:
    """At L = 100 the steps are 2 (alpha 6, beta 12); smoothing blends old and new."""
    vegas = VegasLimit(initial_limit=100, rng=FixedJitter(0.5))
    samples: list[Sample] = [
        (0.010, 60, False),  # no-load RTT 0.010
        (0.010, 60, False),  # queue 0 <= 2: 100 + 12 = 112
        (0.0105, 60, False),  # queue = ceil(112*(1 - 10/10.5)) = ceil(5.33) = 6: not < 6, hold
        (0.0104, 60, False),  # queue = ceil(112*(1 - 10/10.4)) = ceil(4.31) = 5 < 6: 112 + 2 = 114
        (0.02, 60, False),  # queue = ceil(114*0.5) = 57 > 12: 114 - 2 = 112
    ]
    assert run(vegas, samples) == [100, 112, 112, 114, 112]
    smooth = VegasLimit(initial_limit=20, smoothing=0.5, rng=FixedJitter(0.5))
    # second sample: new = 20 + 6 = 26; L = 0.5*20 + 0.5*26 = 23
    assert run(smooth, [(0.01, 10, False), (0.01, 10, False)]) == [20, 23]


def test_vegas_reprobes_the_no_load_rtt() -> None:
    """Every probe_multiplier*L*jitter samples the sample's RTT becomes the no-load RTT."""
    # probe_multiplier=1, jitter 0.5: probe once the count reaches 0.5*1*L
    vegas = VegasLimit(initial_limit=4, probe_multiplier=1, rng=FixedJitter(0.5))
    samples: list[Sample] = [
        (0.010, 4, False),  # count 1 < 2: first RTT, no-load 0.010
        (0.030, 4, False),  # count 2 >= 0.5*4: probe, no-load = 0.030 (forgets 0.010), hold
        (0.030, 4, False),  # count 1: queue = ceil(4*(1 - 1)) = 0 <= 1: 4 + 6 = 10
        (0.030, 10, False),  # count 2 < 0.5*10: queue 0: 10 + 6 = 16
    ]
    assert run(vegas, samples) == [4, 4, 10, 16]
    assert vegas.rtt_noload == 0.030
    stale = VegasLimit(initial_limit=4, probe_multiplier=1000, rng=FixedJitter(0.5))
    # never probes: the old no-load 0.010 stays; queue = ceil(4*(1 - 1/3)) = 3: hold at 4
    assert run(stale, samples[:3]) == [4, 4, 4]


def test_vegas_bounds() -> None:
    """The new limit is clamped to [min_limit, max_limit] before smoothing."""
    vegas = VegasLimit(initial_limit=22, max_limit=25, rng=FixedJitter(0.5))
    assert run(vegas, [(0.01, 20, False), (0.01, 20, False)]) == [22, 25]  # 22 + 6 -> 25
    floor = VegasLimit(initial_limit=5, min_limit=5, rng=FixedJitter(0.5))
    assert run(floor, [(0.01, 5, True)]) == [5]  # 5 - 1 -> 5


def test_a_zero_rtt_teaches_nothing() -> None:
    """A clock that did not move measured nothing: the delay-based limits hold."""
    vegas = VegasLimit(rng=FixedJitter(0.5))
    assert run(vegas, [(0.0, 20, False), (0.0, 20, False)]) == [20, 20]
    assert vegas.rtt_noload is None
    gradient = Gradient2Limit()
    assert run(gradient, [(0.0, 20, False)]) == [20]
    assert gradient.long_rtt == 0.0


# -- validation -----------------------------------------------------------------------

COMMON: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"initial_limit": 0}, ValueError, "initial_limit="),
    ({"initial_limit": 2.5}, TypeError, "initial_limit="),
    ({"initial_limit": True}, TypeError, "initial_limit="),
    ({"min_limit": 0}, ValueError, "min_limit="),
    ({"max_limit": "10"}, TypeError, "max_limit="),
    ({"initial_limit": 5, "min_limit": 10}, ValueError, "min_limit <= initial_limit"),
    ({"initial_limit": 50, "max_limit": 40}, ValueError, "initial_limit <= max_limit"),
    ({"window": 0}, ValueError, "window="),
    ({"window": -1}, ValueError, "window="),
    ({"window": math.nan}, ValueError, "window="),
    ({"window": "1"}, TypeError, "window="),
]


@pytest.mark.parametrize("factory", [AIMDLimit, Gradient2Limit, VegasLimit])
@pytest.mark.parametrize(("kwargs", "error", "match"), COMMON)
def test_bad_common_parameters(
    factory: Any, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Min <= initial <= max limits, ints >= 1, a positive window: errors name the parameter."""
    with pytest.raises(error, match=match):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "match"),
    [
        (AIMDLimit, {"backoff_ratio": 1.0}, ValueError, "backoff_ratio="),
        (AIMDLimit, {"backoff_ratio": 0.4}, ValueError, "backoff_ratio="),
        (AIMDLimit, {"backoff_ratio": True}, TypeError, "backoff_ratio="),
        (AIMDLimit, {"timeout": 0}, ValueError, "timeout="),
        (AIMDLimit, {"timeout": None}, TypeError, "timeout="),
        (Gradient2Limit, {"smoothing": 0}, ValueError, "smoothing="),
        (Gradient2Limit, {"smoothing": 1.5}, ValueError, "smoothing="),
        (Gradient2Limit, {"smoothing": "0.2"}, TypeError, "smoothing="),
        (Gradient2Limit, {"queue_size": -1}, ValueError, "queue_size="),
        (Gradient2Limit, {"long_window": 0}, ValueError, "long_window="),
        (Gradient2Limit, {"rtt_tolerance": 0.9}, ValueError, "rtt_tolerance="),
        (Gradient2Limit, {"rtt_tolerance": math.inf}, ValueError, "rtt_tolerance="),
        (Gradient2Limit, {"rtt_tolerance": None}, TypeError, "rtt_tolerance="),
        (VegasLimit, {"smoothing": -0.1}, ValueError, "smoothing="),
        (VegasLimit, {"probe_multiplier": 0}, ValueError, "probe_multiplier="),
        (VegasLimit, {"rng": 42}, TypeError, "rng="),
    ],
)
def test_bad_algorithm_parameters(
    factory: Any, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Every algorithm parameter is checked at construction, naming the parameter."""
    with pytest.raises(error, match=match):
        factory(**kwargs)


def test_defaults_are_the_documented_ones() -> None:
    """The defaults the docs list (the source's, with the named deviations)."""
    aimd = AIMDLimit()
    assert (aimd.initial_limit, aimd.min_limit, aimd.max_limit) == (20, 1, 200)
    assert (aimd.backoff_ratio, aimd.timeout, aimd.window) == (0.9, 5.0, 0.1)
    g = Gradient2Limit()
    assert (g.initial_limit, g.min_limit, g.max_limit) == (20, 20, 200)
    assert (g.smoothing, g.queue_size, g.long_window, g.rtt_tolerance, g.window) == (
        0.2,
        4,
        600,
        1.0,
        0.1,
    )
    v = VegasLimit()
    assert (v.initial_limit, v.min_limit, v.max_limit) == (20, 1, 1000)
    assert (v.smoothing, v.probe_multiplier, v.window) == (1.0, 30, 0.1)
    assert AIMDLimit(window=datetime.timedelta(milliseconds=50)).window == 0.05
    assert AIMDLimit(window=None).window is None
    assert "backoff_ratio=0.9" in repr(aimd)
