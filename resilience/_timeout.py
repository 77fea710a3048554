"""Timeout: bound one call in time (cancel it when async; set a deadline when sync)."""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._awaitable import PLAIN_TYPES, is_awaitable_type
from ._clock import Clock, resolve_clock
from ._compose import _NOTHING, Policy, not_awaitable, returned_awaitable
from ._counter import peek
from ._deadline import enter_deadline, leave_deadline
from ._tracking import track
from ._validate import check_seconds, check_string
from .errors import DeadlineExceededError
from .events import DeadlineExceeded, ObserverHub, global_hub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Timeout"]

P = ParamSpec("P")
R = TypeVar("R")


class Timeout(Policy):
    """At most `seconds` per call, and never past an enclosing deadline.

    - On a coroutine function, the call is cancelled when time is up
      (asyncio or trio) and `DeadlineExceededError` (a `TimeoutError`) is
      raised. The cancellation is the timeout's own: an outer cancellation
      still propagates as cancellation.
    - On a sync function, nothing is pre-empted: Python cannot safely kill a
      thread. The call runs inside `deadline(seconds)`, which deadline-aware
      code honours (the httpx transport clamps its timeouts to it, `Retry`
      stops before it, `resilience.remaining()` reads it). If the function
      returns after the deadline, its result is still returned.

    Inside the call, `resilience.remaining()` reports the time left either way.

    If an enclosing deadline is already spent when the call would start, the
    function is not called (sync or async): `DeadlineExceededError` is raised
    with `before_call=True` and `budget=0.0`, counted and published like a
    cut call. A coroutine returned to `call()`, or a plain value to
    `acall()`, raises `resilience.MisuseError`.

    Args:
        seconds: The time allowed per call (> 0; a number or a `datetime.timedelta`).
        name: Names the timeout in errors, events and metrics.
        clock: A `resilience.Clock` for the sync deadline (async cancellation
            always runs on the event loop's own clock).
    """

    def __init__(self, seconds: float, *, name: str = "timeout", clock: Clock | None = None):
        self.seconds = check_seconds(seconds, "seconds")
        self.name = check_string(name, "name")
        self.clock = resolve_clock(clock)
        #: This policy's observers; forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)
        self._exceeded: itertools.count[int] = itertools.count()
        track("timeout", self)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn` inside a deadline of `seconds` (not pre-empted)."""
        token, entered = enter_deadline(self.seconds, self.clock)
        try:
            if entered.budget <= 0:
                raise self._exceeded_error(0.0, before_call=True)
            result = fn(*args, **kwargs)
        finally:
            leave_deadline(token)
        if type(result) not in PLAIN_TYPES and is_awaitable_type(type(result)):
            raise returned_awaitable(self, fn, result)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn`, cancelling it after `seconds` (or at the enclosing deadline)."""
        token, entered = enter_deadline(self.seconds, self.clock)
        try:
            budget = entered.budget
            if budget <= 0:
                raise self._exceeded_error(0.0, before_call=True)
            pending: Any = _NOTHING
            asyncio = sys.modules.get("asyncio")
            if asyncio is not None and _asyncio_running(asyncio):
                scope = asyncio.timeout(budget)
                try:
                    async with scope:
                        pending = fn(*args, **kwargs)
                        result: R = await pending
                        return result
                except TimeoutError as error:
                    if not scope.expired():
                        raise  # the call's own TimeoutError, or an inner Timeout's
                    raise self._exceeded_error(budget) from error
                except TypeError:
                    misuse = not_awaitable(self, fn, pending)
                    if misuse is not None:
                        raise misuse from None
                    raise
            import trio

            try:
                with trio.fail_after(budget):
                    pending = fn(*args, **kwargs)
                    return await pending  # type: ignore[no-any-return]
            except trio.TooSlowError as error:
                raise self._exceeded_error(budget) from error
            except TypeError:
                misuse = not_awaitable(self, fn, pending)
                if misuse is not None:
                    raise misuse from None
                raise
        finally:
            leave_deadline(token)

    def _exceeded_error(self, budget: float, *, before_call: bool = False) -> DeadlineExceededError:
        next(self._exceeded)
        if self.events.active:
            self.events.publish(
                DeadlineExceeded(name=self.name, time=self.clock.monotonic(), budget=budget)
            )
        return DeadlineExceededError(self.name, budget, before_call=before_call)

    def metrics(self) -> dict[str, int]:
        """How many calls ran out of time (async calls cancelled)."""
        return {"deadline_exceeded": peek(self._exceeded)}

    def __repr__(self) -> str:
        return f"Timeout({self.seconds!r}, name={self.name!r})"


def _asyncio_running(asyncio: Any) -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
