"""Admission: at most `limit` calls at once, a FIFO queue, bounded waits.

The machinery `Bulkhead` (a fixed limit) and `ConcurrencyLimit` (a limit that
a strategy moves) share: one lock, an in-flight count, a queue of waiters
that threads, asyncio tasks and trio tasks join alike, waits bounded by
`max_wait` on the thread's or loop's own timer or on a fake clock's alarms,
and the refusal of a sync wait inside a running event loop.

The limit may change at run time (`_set_limit`): when it rises, waiters are
granted at once up to the new limit; when it falls, calls in flight finish
undisturbed and nobody is admitted until fewer than `limit` are in flight.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, TypeVar

from ._clock import Clock, alarms_of, resolve_clock
from ._compose import Guard
from ._validate import check_int, check_seconds, check_string
from .errors import BulkheadFullError, MisuseError
from .events import ObserverHub, global_hub

if TYPE_CHECKING:
    import itertools

__all__ = ["Admission"]

Token = TypeVar("Token")


class _Waiter:
    """A caller queued for a slot; `granted` is set (under the lock) when it gets one."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Any) -> None:
        self.granted = False
        self.wake = wake


class Admission(Guard[Token]):
    """The shared admission core: subclasses give `_enter`/`_aenter` and settle with `_release`.

    Subclasses set `_rejected` (an `itertools.count`) and implement `_refuse`
    (count a rejection and build its error, under the lock) and `_announce`
    (publish it, outside the lock); `_admit` and `_aadmit` take a slot or
    raise, waiting up to `max_wait` in between.
    """

    __slots__ = (
        "__weakref__",
        "_call_at",
        "_in_flight",
        "_limit",
        "_lock",
        "_rejected",
        "_waiters",
        "clock",
        "events",
        "max_queue",
        "max_wait",
        "name",
    )

    _rejected: itertools.count[int]
    #: What the blocking-loop error calls this guard ("bulkhead", "limit").
    _noun = "bulkhead"

    def _init_admission(
        self,
        limit: int,
        *,
        max_wait: float,
        max_queue: int | None,
        name: str,
        clock: Clock | None,
    ) -> None:
        self._limit = limit
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

    # -- admission ----------------------------------------------------------------

    def _try_take(self) -> bool:
        """Take a free slot if there is one and nobody is queued for it (under the lock)."""
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return True
        return False

    def _queue_full(self) -> bool:
        return self.max_queue is not None and len(self._waiters) >= self.max_queue

    def _admit(self) -> None:
        """Take a slot for a sync caller, waiting (blocking the thread) up to `max_wait`."""
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
        kind, noun = type(self).__name__, self._noun
        return MisuseError(
            f"{kind} {self.name!r} is full and a sync `with {noun}:` / `{noun}.call()` "
            f"would block the running {loop} event loop for up to {self.max_wait:g}s waiting "
            f"for a slot (every other task would stall with it). In async code use "
            f"`async with {noun}:`, `await {noun}.acall(fn)` or decorate the `async def`; "
            f"run blocking code in a worker thread (`asyncio.to_thread`, "
            f"`trio.to_thread.run_sync`)."
        )

    async def _aadmit(self) -> None:
        """Take a slot for a task, waiting (never blocking the loop) up to `max_wait`."""
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
        raise NotImplementedError

    def _announce(self, error: BulkheadFullError) -> BulkheadFullError:
        """Tell the observers about a rejection, outside the lock (they may read us)."""
        raise NotImplementedError

    # -- release and limit changes -----------------------------------------------

    def _release(self) -> None:
        """Give a slot back: to the longest waiter if the limit allows, else to the pool."""
        with self._lock:
            if not self._waiters or self._in_flight > self._limit:
                self._in_flight -= 1
                return
            waiter = self._waiters.popleft()
            waiter.granted = True  # the slot passes straight on: in_flight unchanged
        _wake(waiter)

    def _grant(self) -> list[_Waiter]:
        """Hand free slots to waiters, oldest first, up to the limit (under the lock).

        Returns the waiters granted; wake each one outside the lock (`_wake`).
        """
        granted: list[_Waiter] = []
        waiters = self._waiters
        while waiters and self._in_flight < self._limit:
            waiter = waiters.popleft()
            waiter.granted = True
            self._in_flight += 1
            granted.append(waiter)
        return granted

    def _set_limit(self, limit: int) -> None:
        """Change the limit now; a higher limit grants waiters at once."""
        with self._lock:
            self._limit = limit
            granted = self._grant()
        for waiter in granted:
            _wake(waiter)

    # -- reading ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers queued for a slot now."""
        return len(self._waiters)


def _wake(waiter: _Waiter) -> None:
    try:
        waiter.wake()
    except Exception:  # noqa: BLE001  (its event loop is gone; the waiter gives the slot back)
        return


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
