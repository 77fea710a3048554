"""Tools for testing code that uses resilience, without real waiting.

```python
from resilience.testing import FakeClock

clock = FakeClock()
breaker = resilience.CircuitBreaker("payments", clock=clock, open_duration=30)
...
clock.advance(30)        # the open period is over, instantly
```
"""

from __future__ import annotations

import math
import threading

from ._clock import async_sleep
from ._validate import check_seconds

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock that moves only when told to, or when someone sleeps.

    `sleep(s)` and `await asleep(s)` return at once and move the clock
    forward by `s`, so code under test sees exactly the time it asked to wait.
    Every requested sleep is kept in `sleeps`. `asleep` still yields to the
    event loop once (asyncio or trio), so it stays a cancellation point.

    Concurrent sleepers each move the clock by their own amount, one after
    the other: the clock models a sequence of waits, not a scheduler.

    Args:
        start: The initial reading of `monotonic()`.
    """

    __slots__ = ("_lock", "_now", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = check_seconds(start, "start", allow_zero=True)
        self._lock = threading.Lock()
        #: Every sleep requested so far, in seconds, in call order.
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """Return the fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds` (zero or more)."""
        seconds = check_seconds(seconds, "seconds", allow_zero=True)
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and move the clock forward; returns at once."""
        self._record(seconds)

    async def asleep(self, seconds: float) -> None:
        """Record the sleep, move the clock forward, and yield to the loop once."""
        self._record(seconds)
        await async_sleep(0)

    @property
    def slept(self) -> float:
        """The sum of all recorded sleeps, in seconds."""
        return math.fsum(self.sleeps)

    def _record(self, seconds: float) -> None:
        seconds = check_seconds(seconds, "seconds", allow_zero=True)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)})"
