"""A fixed-bucket duration histogram, updated under its owner's lock."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["DEFAULT_BUCKETS", "DurationHistogram"]

#: Seconds; prometheus_client's defaults, which suit request latencies.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class DurationHistogram:
    """Counts of durations per bucket (upper bounds, le) and per label, with sums."""

    __slots__ = ("bounds", "counts", "sums")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds or bounds[0] <= 0:
            raise ValueError(f"buckets must be increasing positive seconds, got {bounds!r}")
        self.bounds = bounds
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, label: str, seconds: float) -> None:
        """Count one duration (call under the owner's lock)."""
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0] * (len(self.bounds) + 1)  # last: +Inf
            self.sums[label] = 0.0
        counts[bisect_left(self.bounds, seconds)] += 1
        self.sums[label] += seconds

    def snapshot(self) -> dict[str, tuple[list[tuple[float, int]], float]]:
        """Label -> (cumulative (le, count) pairs ending with +Inf, sum)."""
        result = {}
        for label, counts in self.counts.items():
            running = 0
            cumulative = []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            result[label] = (cumulative, self.sums[label])
        return result
