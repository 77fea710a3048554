"""Time as the policies see it: a monotonic clock and the sleeps that go with it.

Every policy takes a `clock=`; tests pass `resilience.testing.FakeClock` so
that nothing really waits. Wall-clock time is never used: it jumps.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "async_sleep", "resolve_clock"]


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
