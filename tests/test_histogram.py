from __future__ import annotations

import pytest

from resilience._histogram import DurationHistogram


def test_cumulative_buckets_and_sums() -> None:
    """Each duration lands in the first bucket whose bound is >= it; output is cumulative."""
    histogram = DurationHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 7.0):
        histogram.observe("success", seconds)
    buckets, total = histogram.snapshot()["success"]
    assert buckets == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert total == pytest.approx(7.65)


@pytest.mark.parametrize("bounds", [(), (1.0, 0.5), (0.0, 1.0), (1.0, 1.0)])
def test_bad_buckets(bounds: tuple[float, ...]) -> None:
    """Buckets must be increasing positive seconds."""
    with pytest.raises(ValueError, match="buckets"):
        DurationHistogram(bounds)
