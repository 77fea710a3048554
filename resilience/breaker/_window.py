"""Sliding windows of call outcomes: the last N calls, or the last N seconds.

The time window is a ring of per-bucket aggregates with running totals:
advancing evicts the oldest buckets by subtracting them from the totals
("subtract on evict", as in resilience4j's SlidingTimeWindowMetrics). The
count window keeps the positions of its failures and slow calls, so that a
success costs nothing but a lock-free counter increment in the breaker.
Record and read are O(1) amortized; memory depends on the window's size,
never on the call rate.
"""

from __future__ import annotations

import math
from collections import deque

from .._validate import check_int, check_seconds

__all__ = ["CountWindow", "TimeWindow", "WindowState"]


class WindowState:
    """The running state of one breaker's window (created by a window spec).

    `calls`, `failures` and `slow` are current after `record()` or
    `refresh()`. The breaker numbers outcomes (0, 1, 2... per closed period)
    and passes the number along; a count window uses it as the position.
    `aged` is set when outcomes age out of a time window (which can raise its
    rates); the breaker clears it when it checks its thresholds.
    """

    __slots__ = ("aged", "calls", "failures", "slow")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.aged = False

    def record(self, number: int, failed: bool, slow: bool, now: float) -> None:
        """Add outcome number `number`, seen at `now`."""
        raise NotImplementedError

    def refresh(self, recorded: int, now: float) -> None:
        """Bring the totals up to date: `recorded` outcomes so far, time `now`."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every outcome."""
        raise NotImplementedError


class CountWindow:
    """The last `size` recorded outcomes (resilience4j's COUNT_BASED window).

    Args:
        size: How many outcomes the window holds (>= 1).
    """

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = check_int(size, "size")

    def _create(self) -> _CountLog:
        return _CountLog(self.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountWindow) and other.size == self.size

    def __hash__(self) -> int:
        return hash((CountWindow, self.size))

    def __repr__(self) -> str:
        return f"CountWindow({self.size})"


class TimeWindow:
    """The outcomes of the last `seconds` (resilience4j's TIME_BASED window).

    Outcomes are aggregated in `buckets` slots of `seconds / buckets` each, so
    an outcome ages out between `seconds - seconds / buckets` and `seconds`
    after it was recorded. Buckets advance lazily, on record and on read.

    Args:
        seconds: The window's length.
        buckets: Its resolution; default: one bucket per second, at least 10
            and at most 120.
    """

    __slots__ = ("buckets", "seconds")

    def __init__(self, seconds: float, *, buckets: int | None = None) -> None:
        self.seconds = check_seconds(seconds, "seconds")
        if buckets is None:
            buckets = min(max(10, math.ceil(self.seconds)), 120)
        self.buckets = check_int(buckets, "buckets")

    def _create(self) -> _TimeRing:
        return _TimeRing(self.seconds / self.buckets, self.buckets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimeWindow) and (other.seconds, other.buckets) == (
            self.seconds,
            self.buckets,
        )

    def __hash__(self) -> int:
        return hash((TimeWindow, self.seconds, self.buckets))

    def __repr__(self) -> str:
        return f"TimeWindow(seconds={self.seconds!r}, buckets={self.buckets})"


class _CountLog(WindowState):
    """The last `size` outcomes, kept as the numbers of the failures and slow calls.

    Outcome number n is in the window while n >= recorded - size. A success
    changes nothing here but the count of recorded outcomes, which the breaker
    keeps in a lock-free counter: that is what lets a closed breaker settle a
    fast success without taking its lock. Memory: at most `size` numbers each.
    """

    __slots__ = ("_failed", "_size", "_slowed")

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        # Shared empty deques until the first failure / slow call: most breakers
        # in a large registry never see one, and an empty deque costs ~600 bytes.
        self._failed: deque[int] = _NONE_YET
        self._slowed: deque[int] = _NONE_YET

    def record(self, number: int, failed: bool, slow: bool, now: float) -> None:
        if failed:
            if self._failed is _NONE_YET:
                self._failed = deque()
            self._failed.append(number)
        if slow:
            if self._slowed is _NONE_YET:
                self._slowed = deque()
            self._slowed.append(number)
        self.refresh(number + 1, now)

    def refresh(self, recorded: int, now: float) -> None:
        oldest = recorded - self._size
        failed, slowed = self._failed, self._slowed
        while failed and failed[0] < oldest:
            failed.popleft()
        while slowed and slowed[0] < oldest:
            slowed.popleft()
        self.calls = min(recorded, self._size)
        self.failures = len(failed)
        self.slow = len(slowed)

    def reset(self) -> None:
        self._failed = self._slowed = _NONE_YET
        self.calls = self.failures = self.slow = 0
        self.aged = False


_NONE_YET: deque[int] = deque(maxlen=0)  # shared and always empty (appending is a no-op)


class _TimeRing(WindowState):
    """One aggregate per time bucket; `_head` is the absolute index of the newest."""

    __slots__ = ("_bucket_calls", "_bucket_failures", "_bucket_slow", "_head", "_width")

    def __init__(self, width: float, buckets: int) -> None:
        super().__init__()
        self._width = width
        self._bucket_calls = [0] * buckets
        self._bucket_failures = [0] * buckets
        self._bucket_slow = [0] * buckets
        self._head: int | None = None

    def refresh(self, recorded: int, now: float) -> None:
        index = int(now // self._width)
        head = self._head
        if head is None:
            self._head = index
            return
        if index <= head:
            return
        size = len(self._bucket_calls)
        calls = self.calls
        for step in range(head + 1, head + 1 + min(index - head, size)):
            slot = step % size
            self.calls -= self._bucket_calls[slot]
            self.failures -= self._bucket_failures[slot]
            self.slow -= self._bucket_slow[slot]
            self._bucket_calls[slot] = self._bucket_failures[slot] = self._bucket_slow[slot] = 0
        self._head = index
        if self.calls != calls:
            self.aged = True

    def record(self, number: int, failed: bool, slow: bool, now: float) -> None:
        head = self._head
        if head is None or now // self._width > head:
            self.refresh(number + 1, now)
            head = self._head
        # An outcome stamped before the head (a clock that went back) joins the head.
        slot = head % len(self._bucket_calls)  # type: ignore[operator]
        self._bucket_calls[slot] += 1
        self.calls += 1
        if failed:
            self._bucket_failures[slot] += 1
            self.failures += 1
        if slow:
            self._bucket_slow[slot] += 1
            self.slow += 1

    def reset(self) -> None:
        size = len(self._bucket_calls)
        self._bucket_calls = [0] * size
        self._bucket_failures = [0] * size
        self._bucket_slow = [0] * size
        self._head = None
        self.calls = self.failures = self.slow = 0
        self.aged = False
