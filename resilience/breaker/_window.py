"""Sliding windows of call outcomes: the last N calls, or the last N seconds.

Both are rings of aggregated slots with running totals: recording evicts the
oldest slot by subtracting it from the totals ("subtract on evict", as in
resilience4j's FixedSizeSlidingWindowMetrics and SlidingTimeWindowMetrics).
Record and read are O(1); memory depends on the window's size, never on the
call rate.
"""

from __future__ import annotations

import math

from .._validate import check_int, check_seconds

__all__ = ["CountWindow", "TimeWindow", "WindowState"]


class WindowState:
    """The running state of one breaker's window (created by a window spec)."""

    __slots__ = ("calls", "failures", "slow")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one outcome seen at `now`."""
        raise NotImplementedError

    def advance(self, now: float) -> None:
        """Drop what has aged out by `now` (time windows); a no-op for counts."""

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

    def _create(self) -> _CountRing:
        return _CountRing(self.size)

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


class _CountRing(WindowState):
    """One slot per outcome: bit 0 = failed, bit 1 = slow, -1 = empty."""

    __slots__ = ("_next", "_slots")

    def __init__(self, size: int) -> None:
        super().__init__()
        self._slots = [-1] * size
        self._next = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        slots = self._slots
        index = self._next
        old = slots[index]
        if old >= 0:
            self.calls -= 1
            self.failures -= old & 1
            self.slow -= old >> 1
        slots[index] = failed | (slow << 1)
        self.calls += 1
        self.failures += failed
        self.slow += slow
        index += 1
        self._next = 0 if index == len(slots) else index

    def reset(self) -> None:
        self._slots = [-1] * len(self._slots)
        self._next = 0
        self.calls = self.failures = self.slow = 0


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

    def advance(self, now: float) -> None:
        index = int(now // self._width)
        head = self._head
        if head is None:
            self._head = index
            return
        if index <= head:
            return
        size = len(self._bucket_calls)
        for step in range(head + 1, head + 1 + min(index - head, size)):
            slot = step % size
            self.calls -= self._bucket_calls[slot]
            self.failures -= self._bucket_failures[slot]
            self.slow -= self._bucket_slow[slot]
            self._bucket_calls[slot] = self._bucket_failures[slot] = self._bucket_slow[slot] = 0
        self._head = index

    def record(self, failed: bool, slow: bool, now: float) -> None:
        self.advance(now)
        # An outcome stamped before the head (a clock that went back) joins the head.
        slot = self._head % len(self._bucket_calls)  # type: ignore[operator]
        self._bucket_calls[slot] += 1
        self._bucket_failures[slot] += failed
        self._bucket_slow[slot] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def reset(self) -> None:
        size = len(self._bucket_calls)
        self._bucket_calls = [0] * size
        self._bucket_failures = [0] * size
        self._bucket_slow = [0] * size
        self._head = None
        self.calls = self.failures = self.slow = 0
