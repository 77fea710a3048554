"""Bulkhead: cap how much of this process one dependency can tie up."""

from __future__ import annotations

import itertools
import sys
import threading
from collections import deque
from typing import Any

from ._clock import Clock, alarms_of, resolve_clock
from ._compose import Guard
from ._counter import peek
from ._tracking import track
from ._validate import check_int, check_seconds, check_string
from .errors import BulkheadFullError, MisuseError
from .events import BulkheadRejected, ObserverHub, global_hub

__all__ = ["Bulkhead"]


class _Waiter:
    """A caller queued for a slot; `grant()` hands it one (thread-safe)."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Any) -> None:
        self.granted = False
        self.wake = wake


class Bulkhead(Guard[None]):
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

    Args:
        max_concurrent: Calls allowed at once (>= 1).
        max_wait: Seconds a call may wait for a slot (>= 0; a number or a
            `datetime.timedelta`).
        max_queue: Callers allowed to wait at once; more are rejected at
            once (default: no limit beyond `max_wait`).
        name: Names the bulkhead in errors, events and metrics.
        clock: A `resilience.Clock` that measures (and, with alarms, ends) waits.
    """

    __slots__ = (
        "__weakref__",
        "_call_at",
        "_in_flight",
        "_lock",
        "_rejected",
        "_waiters",
        "clock",
        "events",
        "max_concurrent",
        "max_queue",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_wait: float = 0.0,
        max_queue: int | None = None,
        name: str = "bulkhead",
        clock: Clock | None = None,
    ) -> None:
        self.max_concurrent = check_int(max_concurrent, "max_concurrent")
        self.max_wait = check_seconds(max_wait, "max_wait", allow_zero=True)
        if self.max_wait > threading.TIMEOUT_MAX:
            raise ValueError(
                f"max_wait={max_wait!r} exceeds the longest wait threads support "
                f"({threading.TIMEOUT_MAX:.0f} s)"
            )
        self.max_queue = None if max_queue is None else check_int(max_queue, "max_queue")
        self.name = check_string(name, "name")
        self.clock = resolve_clock(clock)
        # A fake clock's alarms end waits; None: the thread's or loop's own timer does.
        self._call_at = alarms_of(self.clock)
        #: This policy's observers; forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._rejected: itertools.count[int] = itertools.count()
        track("bulkhead", self)

    # -- admission ----------------------------------------------------------------

    def _try_take(self) -> bool:
        """Take a free slot if there is one and nobody is queued for it (under the lock)."""
        if self._in_flight < self.max_concurrent and not self._waiters:
            self._in_flight += 1
            return True
        return False

    def _queue_full(self) -> bool:
        return self.max_queue is not None and len(self._waiters) >= self.max_queue

    def _enter(self) -> None:
        with self._lock:
            if self._try_take():
                return
            refused = self._refuse(0.0) if self.max_wait == 0 or self._queue_full() else None
        if refused is not None:
            raise self._announce(refused)  # observers run outside the lock
        # About to block this thread: never the thread of a running event loop.
        loop = _event_loop_here()
        if loop is not None:
            raise self._blocks_loop(loop)
        event = threading.Event()
        waiter = self._enqueue(event.set)
        if waiter.granted:
            return
        start = self.clock.monotonic()
        alarm = None if self._call_at is None else self._call_at(start + self.max_wait, event.set)
        try:
            event.wait(self.max_wait if alarm is None else None)
        except BaseException:
            self._abandon(waiter)  # interrupted while queued: never strand a slot
            raise
        finally:
            if alarm is not None:
                alarm.cancel()
        self._settle_wait(waiter, self.clock.monotonic() - start)

    def _blocks_loop(self, loop: str) -> MisuseError:
        return MisuseError(
            f"Bulkhead {self.name!r} is full and a sync `with bulkhead:` / `bulkhead.call()` "
            f"would block the running {loop} event loop for up to {self.max_wait:g}s waiting "
            f"for a slot (every other task would stall with it). In async code use "
            f"`async with bulkhead:`, `await bulkhead.acall(fn)` or decorate the `async def`; "
            f"run blocking code in a worker thread (`asyncio.to_thread`, "
            f"`trio.to_thread.run_sync`)."
        )

    async def _aenter(self) -> None:
        with self._lock:
            if self._try_take():
                return
            refused = self._refuse(0.0) if self.max_wait == 0 or self._queue_full() else None
        if refused is not None:
            raise self._announce(refused)
        start = self.clock.monotonic()
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and _asyncio_loop(asyncio) is not None:
            await self._wait_asyncio(asyncio, start)
        else:
            await self._wait_trio(start)

    async def _wait_asyncio(self, asyncio: Any, start: float) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        waiter = self._enqueue(wake)
        if waiter.granted:  # a slot freed up since the first look: nothing to wait for
            return
        alarm = None if self._call_at is None else self._call_at(start + self.max_wait, wake)
        try:
            if alarm is None:
                await asyncio.wait_for(asyncio.shield(future), self.max_wait)
            else:
                await asyncio.shield(future)
        except TimeoutError:
            pass
        except BaseException:
            self._abandon(waiter)  # cancelled while queued: give back a granted slot
            raise
        finally:
            if alarm is not None:
                alarm.cancel()
        self._settle_wait(waiter, self.clock.monotonic() - start)

    async def _wait_trio(self, start: float) -> None:
        import trio

        event = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake() -> None:
            token.run_sync_soon(event.set)

        waiter = self._enqueue(wake)
        if waiter.granted:
            return
        alarm = None if self._call_at is None else self._call_at(start + self.max_wait, wake)
        try:
            if alarm is None:
                with trio.move_on_after(self.max_wait):
                    await event.wait()
            else:
                await event.wait()
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            if alarm is not None:
                alarm.cancel()
        self._settle_wait(waiter, self.clock.monotonic() - start)

    def _enqueue(self, wake: Any) -> _Waiter:
        waiter = _Waiter(wake)
        with self._lock:
            if self._try_take():  # a slot freed up since the first look
                waiter.granted = True
                return waiter
            if not self._queue_full():
                self._waiters.append(waiter)
                return waiter
            refused = self._refuse(0.0)
        raise self._announce(refused)

    def _settle_wait(self, waiter: _Waiter, waited: float) -> None:
        """After a wait: keep a granted slot, or leave the queue and reject."""
        with self._lock:
            if waiter.granted:
                return
            self._waiters.remove(waiter)
            refused = self._refuse(waited)
        raise self._announce(refused)

    def _abandon(self, waiter: _Waiter) -> None:
        with self._lock:
            if not waiter.granted:
                self._waiters.remove(waiter)
                return
        self._release()

    def _refuse(self, waited: float) -> BulkheadFullError:
        """Count a rejection and build its error (under the lock; publishes nothing)."""
        next(self._rejected)
        return BulkheadFullError(self.name, self.max_concurrent, waited)

    def _announce(self, error: BulkheadFullError) -> BulkheadFullError:
        """Tell the observers about a rejection, outside the lock (they may read us)."""
        if self.events.active:
            self.events.publish(
                BulkheadRejected(
                    name=self.name,
                    time=self.clock.monotonic(),
                    max_concurrent=self.max_concurrent,
                    waited=error.waited,
                )
            )
        return error

    # -- release ------------------------------------------------------------------

    def _release(self) -> None:
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True  # the slot passes straight on: in_flight unchanged
            else:
                self._in_flight -= 1
                return
        try:
            waiter.wake()
        except Exception:  # noqa: BLE001  (its event loop is gone; the waiter gives the slot back)
            return

    def _on_error(self, token: None, exc: BaseException) -> None:
        self._release()

    def _on_exit(self, token: None) -> None:
        self._release()

    # -- reading ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers queued for a slot now."""
        return len(self._waiters)

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
            f"<Bulkhead {self.name!r} {self._in_flight}/{self.max_concurrent} in flight, "
            f"{len(self._waiters)} waiting>"
        )


def _asyncio_loop(asyncio: Any) -> Any:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _event_loop_here() -> str | None:
    """The event loop running in this thread ("asyncio" or "trio"), or None.

    Looks only at libraries already imported: code that never imported one
    cannot be running its loop.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and _asyncio_loop(asyncio) is not None:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return None
        return "trio"
    return None
