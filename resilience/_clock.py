"""Time as the policies see it: a monotonic clock and the sleeps that go with it.

Every policy takes a `clock=`; tests pass `resilience.testing.FakeClock` so
that nothing really waits. Wall-clock time is never used: it jumps.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "SYSTEM_CLOCK",
    "Cancellable",
    "Clock",
    "SystemClock",
    "alarms_of",
    "async_sleep",
    "resolve_clock",
]


@runtime_checkable
class Clock(Protocol):
    """What a policy needs of time: read it, and wait for it (sync and async)."""

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes backwards."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds`."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` (asyncio or trio)."""
        ...


async def async_sleep(seconds: float) -> None:
    """Sleep on whichever event loop runs the caller: asyncio or trio.

    Detects the loop without importing either library, so that neither
    import costs anything for a user who does not use it.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            await asyncio.sleep(seconds)
            return
    trio = sys.modules.get("trio")
    if trio is not None and _in_trio(trio):
        await trio.sleep(seconds)
        return
    raise RuntimeError("resilience needs a running asyncio or trio event loop to sleep")


def _in_trio(trio: object) -> bool:
    try:
        trio.lowlevel.current_task()  # type: ignore[attr-defined]
    except RuntimeError:
        return False
    return True


class SystemClock:
    """The real clock: `time.monotonic`, `time.sleep`, and the event loop's sleep."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds` (nothing for zero or less)."""
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds`; zero still yields to the loop."""
        await async_sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


def resolve_clock(clock: Clock | None) -> Clock:
    """Return `clock`, or the system clock for `None`; reject anything else."""
    if clock is None:
        return SYSTEM_CLOCK
    if not isinstance(clock, Clock):
        raise TypeError(
            f"clock= must provide monotonic(), sleep() and asleep() "
            f"(e.g. resilience.testing.FakeClock), got {clock!r}"
        )
    return clock


class Cancellable(Protocol):
    """What `call_at` returns: a pending alarm that can be dropped."""

    def cancel(self) -> None:
        """Drop the alarm; nothing happens if it already fired or was dropped."""
        ...


def alarms_of(clock: Clock) -> Callable[[float, Callable[[], object]], Cancellable] | None:
    """The clock's `call_at`, if it keeps alarms of its own; None for real time.

    A clock that moves only when told to (`resilience.testing.FakeClock`) must
    also end waits and cancel calls when it is moved: it offers `call_at(when,
    callback)`, and `Timeout` and `Bulkhead` wait on it instead of on the event
    loop's or the thread's own (real-time) timers. The system clock, and any
    clock without `call_at`, gives None: real time, the timers as they are.
    """
    if type(clock) is SystemClock:
        return None
    call_at = getattr(clock, "call_at", None)
    return call_at if callable(call_at) else None
