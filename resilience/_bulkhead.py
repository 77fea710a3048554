"""Bulkhead: cap how much of this process one dependency can tie up."""

from __future__ import annotations

import itertools
import threading  # noqa: F401  (tests patch `resilience._bulkhead.threading.Event`)
from typing import TYPE_CHECKING

from ._admission import Admission
from ._counter import peek
from ._tracking import track
from ._validate import check_int
from .errors import BulkheadFullError
from .events import BulkheadRejected

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = ["Bulkhead"]


class Bulkhead(Admission[None]):
    """At most `max_concurrent` calls at once; others wait up to `max_wait`, then fail.

    ```python
    bulkhead = resilience.Bulkhead(max_concurrent=10, max_wait=0.5)

    @bulkhead
    async def query(sql: str) -> Rows: ...
    ```

    A call that finds every slot taken waits in a FIFO queue for at most
    `max_wait` seconds (default 0: it is rejected at once) and then raises
    `BulkheadFullError`. A released slot goes straight to the longest waiter,
    so waiters are never overtaken by newcomers. One bulkhead can be shared
    by threads and by asyncio or trio tasks at the same time; waiting never
    blocks an event loop: a sync entry (`with bulkhead:`, `call`, a decorated
    `def`) that would wait in the thread of a running asyncio or trio loop
    raises `resilience.MisuseError` at once instead, taking no slot and
    leaving no queue entry.

    Waits are measured on `clock` (`waited` in errors and events, event
    times). With the system clock (the default) they end in real time, on the
    thread's or event loop's own timer; with a clock that keeps alarms
    (`resilience.testing.FakeClock`), a waiter is rejected when that clock
    passes `max_wait`, and never by real time passing.

    The admission machinery (queue, waits, loop detection) is the one
    `resilience.ConcurrencyLimit` uses with a limit that moves; here the
    limit is fixed.

    Args:
        max_concurrent: Calls allowed at once (>= 1).
        max_wait: Seconds a call may wait for a slot (>= 0; a number or a
            `datetime.timedelta`).
        max_queue: Callers allowed to wait at once; more are rejected at
            once (default: no limit beyond `max_wait`).
        name: Names the bulkhead in errors, events and metrics.
        clock: A `resilience.Clock` that measures (and, with alarms, ends) waits.
    """

    __slots__ = ()

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_wait: float = 0.0,
        max_queue: int | None = None,
        name: str = "bulkhead",
        clock: Clock | None = None,
    ) -> None:
        self._init_admission(
            check_int(max_concurrent, "max_concurrent"),
            max_wait=max_wait,
            max_queue=max_queue,
            name=name,
            clock=clock,
        )
        self._rejected: itertools.count[int] = itertools.count()
        track("bulkhead", self)

    @property
    def max_concurrent(self) -> int:
        """Calls allowed at once."""
        return self._limit

    # -- admission ----------------------------------------------------------------

    # Admission is the shared core's, unwrapped: no extra frame per call.
    if TYPE_CHECKING:

        def _enter(self) -> None: ...
        async def _aenter(self) -> None: ...

    else:
        _enter = Admission._admit
        _aenter = Admission._aadmit

    def _refuse(self, waited: float) -> BulkheadFullError:
        """Count a rejection and build its error (under the lock; publishes nothing)."""
        next(self._rejected)
        return BulkheadFullError(self.name, self._limit, waited)

    def _announce(self, error: BulkheadFullError) -> BulkheadFullError:
        """Tell the observers about a rejection, outside the lock (they may read us)."""
        if self.events.active:
            self.events.publish(
                BulkheadRejected(
                    name=self.name,
                    time=self.clock.monotonic(),
                    max_concurrent=self._limit,
                    waited=error.waited,
                )
            )
        return error

    # -- release ------------------------------------------------------------------

    def _on_error(self, token: None, exc: BaseException) -> None:
        self._release()

    def _on_exit(self, token: None) -> None:
        self._release()

    # -- reading ------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        """In-flight calls, queued callers and rejections so far."""
        with self._lock:
            return {
                "in_flight": self._in_flight,
                "waiting": len(self._waiters),
                "rejected": peek(self._rejected),
            }

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self.name!r} {self._in_flight}/{self._limit} in flight, "
            f"{len(self._waiters)} waiting>"
        )
