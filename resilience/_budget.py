"""The retry budget: retries may add only a fraction of recent traffic.

Finagle's RetryBudget and gRPC's retry throttling bound retries by traffic:
over the last `window` seconds, retries <= ratio * requests + min_per_second *
window. When a downstream fails, its callers' retries stop growing with the
failure instead of multiplying the load (the "retry storm" that keeps an
overloaded service down, HotOS 2021 "Metastable Failures in Distributed
Systems"). One budget is shared by every caller of a downstream.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from typing import TYPE_CHECKING

from ._clock import Clock, resolve_clock
from ._counter import peek
from ._tracking import track
from ._validate import check_int, check_ratio, check_seconds, check_string

if TYPE_CHECKING:
    import datetime

__all__ = ["RetryBudget"]


class RetryBudget:
    """Allow retries up to `ratio` of recent requests plus `min_per_second`.

    Retry policies call `deposit()` once per logical request (its first
    attempt) and `try_withdraw()` before each retry. Thread-safe; a deposit
    takes no lock (one clock read and an atomic counter), a withdrawal takes a
    short one. Requests are counted per bucket of `window / buckets` seconds,
    so the window slides a bucket at a time.

    Args:
        name: Names the budget in events and metrics.
        ratio: Retries allowed per request in the window, in [0, 1]
            (default 0.2 = 20%; above 1, retries could more than double the
            load, which a budget exists to prevent).
        min_per_second: A floor of retries per second, so that low traffic
            can still retry (a finite number >= 0; default 10, as Finagle).
            With `ratio=0`, `min_per_second * window` must be at least 1.
        window: Seconds of history, a number or a `datetime.timedelta`
            (finite, > 0; default 10, Finagle's TTL).
        buckets: Resolution of the window (an int >= 1; default 10).
        clock: A `resilience.Clock`.
    """

    __slots__ = (
        "__weakref__",
        "_bucket_width",
        "_lock",
        "_monotonic",
        "_next_roll",
        "_requests",
        "_retries",
        "_snapshots",
        "buckets",
        "clock",
        "exhausted",
        "min_per_second",
        "name",
        "ratio",
        "window",
    )

    def __init__(
        self,
        name: str = "retry-budget",
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float | datetime.timedelta = 10.0,
        buckets: int = 10,
        clock: Clock | None = None,
    ) -> None:
        self.name = check_string(name, "name")
        self.ratio = check_ratio(ratio, "ratio", allow_zero=True)
        self.min_per_second = _check_rate(min_per_second, "min_per_second")
        if self.ratio == 0 and self.min_per_second == 0:
            raise ValueError("ratio=0 and min_per_second=0 would never allow a retry")
        self.window = check_seconds(window, "window")
        if self.ratio == 0 and self.min_per_second * self.window < 1:
            raise ValueError(
                f"ratio=0 with min_per_second={min_per_second!r} over window={window!r} "
                f"would never allow a retry: min_per_second * window must be >= 1"
            )
        self.buckets = check_int(buckets, "buckets")
        self.clock = resolve_clock(clock)
        self._monotonic = self.clock.monotonic
        self._bucket_width = self.window / self.buckets
        self._lock = threading.Lock()
        self._requests: itertools.count[int] = itertools.count()
        # (bucket index, requests counted before its first deposit), oldest first.
        self._snapshots: deque[tuple[int, int]] = deque(maxlen=self.buckets + 1)
        # (bucket index, retries withdrawn in it), oldest first.
        self._retries: deque[list[int]] = deque(maxlen=self.buckets + 1)
        self._next_roll = -math.inf
        #: Retries refused because the budget was spent.
        self.exhausted = 0
        track("budget", self)

    def deposit(self) -> None:
        """Count one request (a first attempt)."""
        if self._monotonic() >= self._next_roll:
            self._roll()
        next(self._requests)

    def _roll(self) -> None:
        now = self._monotonic()
        index = int(now // self._bucket_width)
        with self._lock:
            if not self._snapshots or self._snapshots[-1][0] < index:
                self._snapshots.append((index, peek(self._requests)))
            self._next_roll = (index + 1) * self._bucket_width

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and counted) if it is spent."""
        now = self._monotonic()
        index = int(now // self._bucket_width)
        with self._lock:
            requests, retries = self._totals(index)
            if retries + 1 > self.ratio * requests + self.min_per_second * self.window:
                self.exhausted += 1
                return False
            if self._retries and self._retries[-1][0] == index:
                self._retries[-1][1] += 1
            else:
                self._retries.append([index, 1])
            return True

    def _totals(self, index: int) -> tuple[int, int]:
        """(requests, retries) in the buckets of the window ending at bucket `index`."""
        first = index - self.buckets + 1
        total = peek(self._requests)
        start = next((count for bucket, count in self._snapshots if bucket >= first), total)
        retries = sum(count for bucket, count in self._retries if bucket >= first)
        return total - start, retries

    def available(self) -> float:
        """Retries the budget would allow now (may be fractional)."""
        index = int(self._monotonic() // self._bucket_width)
        with self._lock:
            requests, retries = self._totals(index)
        return max(self.ratio * requests + self.min_per_second * self.window - retries, 0.0)

    def metrics(self) -> dict[str, int]:
        """Counters for metrics: requests ever deposited, retries refused."""
        with self._lock:
            return {"requests": peek(self._requests), "exhausted": self.exhausted}

    def __repr__(self) -> str:
        return (
            f"RetryBudget({self.name!r}, ratio={self.ratio!r}, "
            f"min_per_second={self.min_per_second!r}, window={self.window!r})"
        )


def _check_rate(value: object, param: str) -> float:
    """Return `value` as a finite float rate >= 0 (per second: not a duration)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{param}= must be a number per second, got {value!r}")
    rate = float(value)
    if not (0 <= rate < math.inf):
        raise ValueError(f"{param}= must be a finite number >= 0 per second, got {value!r}")
    return rate
