"""Tools for testing code that uses resilience, without real waiting.

```python
from resilience.testing import FakeClock, fast_retries

clock = FakeClock()
breaker = resilience.CircuitBreaker("payments", clock=clock, open_duration=30)
...
clock.advance(30)        # the open period is over, instantly

with fast_retries(attempts=2):   # every retry in this context: no wait, at most 2 calls
    ...
```
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

from ._clock import async_sleep
from ._retry import FastRetries, _fast_retries
from ._validate import check_int, check_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import TracebackType

__all__ = ["Alarm", "FakeClock", "fast_retries"]

P = ParamSpec("P")
R = TypeVar("R")


class Alarm:
    """A callback that a `FakeClock` runs once its time has come; see `FakeClock.call_at`."""

    __slots__ = ("_clock", "_done", "callback", "when")

    def __init__(self, clock: FakeClock, when: float, callback: Callable[[], object]) -> None:
        self._clock = clock
        #: The fake time the alarm is due at.
        self.when = when
        #: What runs when it is due.
        self.callback = callback
        self._done = False

    @property
    def pending(self) -> bool:
        """Whether the alarm has neither fired nor been cancelled."""
        return not self._done

    def cancel(self) -> None:
        """Drop the alarm; nothing happens if it already fired or was cancelled."""
        self._clock._cancel(self)

    def __repr__(self) -> str:
        state = "pending" if not self._done else "done"
        return f"<Alarm at {self.when!r} {state}>"


class FakeClock:
    """A monotonic clock that moves only when told to, or when someone sleeps.

    `sleep(s)` and `await asleep(s)` return at once and move the clock
    forward by `s`, so code under test sees exactly the time it asked to wait.
    Every requested sleep is kept in `sleeps`. `asleep` still yields to the
    event loop once (asyncio or trio), so it stays a cancellation point.

    Concurrent sleepers each move the clock by their own amount, one after
    the other: the clock models a sequence of waits, not a scheduler.

    The clock also keeps alarms (`call_at`): whatever moves it past an
    alarm's time (`advance`, `sleep`, `asleep`) runs the alarm. That is how a
    `resilience.Timeout` with this clock cancels an async call, and how a
    `resilience.Bulkhead` with it ends a wait for a slot, in fake time.

    Args:
        start: The initial reading of `monotonic()`.
    """

    __slots__ = ("_alarms", "_live", "_lock", "_now", "_order", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = check_seconds(start, "start", allow_zero=True)
        self._lock = threading.Lock()
        #: Every sleep requested so far, in seconds, in call order.
        self.sleeps: list[float] = []
        # (when, order, alarm): a heap; cancelled alarms are dropped lazily.
        self._alarms: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._live = 0

    def monotonic(self) -> float:
        """Return the fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds` (zero or more) and run the alarms now due."""
        seconds = check_seconds(seconds, "seconds", allow_zero=True)
        with self._lock:
            self._now += seconds
            due = self._due()
        self._fire(due)

    def sleep(self, seconds: float) -> None:
        """Record the sleep and move the clock forward; returns at once."""
        self._record(seconds)

    async def asleep(self, seconds: float) -> None:
        """Record the sleep, move the clock forward, and yield to the loop once."""
        self._record(seconds)
        await async_sleep(0)

    def call_at(self, when: float, callback: Callable[[], object]) -> Alarm:
        """Run `callback()` once the clock reads `when` or later.

        The callback runs in the thread that moves the clock there (inside its
        `advance`, `sleep` or `asleep`), after the clock has moved, in the order
        of the alarms' times; one already due runs at once, inside `call_at`.
        Returns the `Alarm`; `alarm.cancel()` drops it. An exception raised by
        a callback propagates out of the call that moved the clock, once every
        other due alarm has run.
        """
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise TypeError(f"when= must be a reading of this clock, got {when!r}")
        if not math.isfinite(when):
            raise ValueError(f"when= must be finite, got {when!r}")
        if not callable(callback):
            raise TypeError(f"callback= must be callable(), got {callback!r}")
        alarm = Alarm(self, float(when), callback)
        with self._lock:
            heapq.heappush(self._alarms, (alarm.when, next(self._order), alarm))
            self._live += 1
            due = self._due()
        self._fire(due)
        return alarm

    @property
    def pending_alarms(self) -> int:
        """How many alarms are waiting for their time (neither fired nor cancelled)."""
        return self._live

    @property
    def slept(self) -> float:
        """The sum of all recorded sleeps, in seconds."""
        return math.fsum(self.sleeps)

    def _record(self, seconds: float) -> None:
        seconds = check_seconds(seconds, "seconds", allow_zero=True)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds
            due = self._due() if self._alarms else None
        if due:
            self._fire(due)

    def _due(self) -> list[Alarm]:
        """Take the alarms due now off the heap, in time order (under the lock)."""
        due: list[Alarm] = []
        alarms = self._alarms
        while alarms and alarms[0][0] <= self._now:
            alarm = heapq.heappop(alarms)[2]
            if not alarm._done:
                alarm._done = True
                self._live -= 1
                due.append(alarm)
        return due

    def _cancel(self, alarm: Alarm) -> None:
        with self._lock:
            if alarm._done:
                return
            alarm._done = True
            self._live -= 1
            if len(self._alarms) > 2 * self._live + 32:  # mostly cancelled: compact
                self._alarms = [entry for entry in self._alarms if not entry[2]._done]
                heapq.heapify(self._alarms)

    @staticmethod
    def _fire(due: list[Alarm]) -> None:
        """Run due alarms outside the lock (a callback may move the clock or set alarms)."""
        error: BaseException | None = None
        for alarm in due:
            try:
                alarm.callback()
            except BaseException as exc:  # noqa: BLE001  (re-raised below, after the others ran)
                error = error or exc
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)}, alarms={self._live})"


class fast_retries:
    """Make every `resilience.Retry` in this context retry at once, at most `attempts` calls.

    ```python
    with resilience.testing.fast_retries(attempts=2):
        client.get(url)  # every retry: no wait; at most 2 calls per logical call

    @resilience.testing.fast_retries()
    async def test_flaky_downstream() -> None: ...
    ```

    For the code under test, without touching its policies (in the spirit of
    stamina's `set_testing`):

    - every wait before a retry is zero: the backoff, a server's Retry-After
      and a breaker's `retry_after` alike; a zero wait makes no sleep call;
    - with `attempts`, each call makes at most that many calls, the first
      included (the policy's own `attempts` when lower); `attempts=1` turns
      retries off. Without it, each policy keeps its own `attempts`.

    Everything else still decides as configured: what is retried, the retry
    budget, the deadline, and giving up on a Retry-After above
    `max_retry_after`. The retries of the httpx transports are `Retry`
    policies, so the switch applies to them too.

    The switch is context-local (a `contextvars.ContextVar`): it holds in the
    `with` block (or the decorated function) and in the asyncio or trio tasks
    started inside it, and nowhere else, so parallel tests (pytest-xdist,
    concurrent tasks) do not see each other's. A thread started inside with
    `threading.Thread` runs in a fresh context and does not see it (on
    Python builds where threads do not inherit the context: see
    `sys.flags.thread_inherit_context`); work started with
    `asyncio.to_thread` or run in `contextvars.copy_context()` does.

    It is read only when a retry is about to be planned: a first-try success
    never looks at it. Used as a decorator, sync or `async def`, each call
    runs inside the switch. Blocks nest; the innermost wins.

    Args:
        attempts: The most calls per logical call, first included (an int
            >= 1), or None to keep each policy's own.
    """

    __slots__ = ("_settings",)

    def __init__(self, attempts: int | None = None) -> None:
        if attempts is not None:
            attempts = check_int(attempts, "attempts")
        self._settings = FastRetries(attempts)

    @property
    def attempts(self) -> int | None:
        """The cap on calls per logical call, or None."""
        return self._settings.attempts

    def __enter__(self) -> Self:
        outer = _fast_retries.get()
        # The node remembers what was in force before: no state on self, so one
        # object may be entered by many threads and tasks at once.
        _fast_retries.set(FastRetries(self._settings.attempts, owner=self, outer=outer))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        current = _fast_retries.get()
        if current is None or current.owner is not self:
            raise RuntimeError(
                "fast_retries.__exit__ without a matching __enter__ in this thread or task: "
                "a `with` block must end where it began"
            )
        _fast_retries.set(current.outer)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Run every call of `fn` (sync or `async def`) inside the switch."""
        from ._compose import is_async_callable

        if not callable(fn):
            raise TypeError(f"fast_retries decorates callables, got {fn!r}")
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper

    def __repr__(self) -> str:
        return f"fast_retries(attempts={self._settings.attempts!r})"
