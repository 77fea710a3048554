"""Timeout: bound one call in time (cancel it when async; set a deadline when sync)."""

from __future__ import annotations

import itertools
import math
import sys
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._awaitable import PLAIN_TYPES, is_awaitable_type
from ._clock import Cancellable, Clock, alarms_of, resolve_clock
from ._compose import _NOTHING, Policy, not_awaitable, returned_awaitable
from ._counter import peek
from ._deadline import Deadline, enter_deadline, leave_deadline
from ._tracking import track
from ._validate import check_seconds, check_string
from .errors import DeadlineExceededError
from .events import DeadlineExceeded, ObserverHub, global_hub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextvars import Token
    from types import TracebackType

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

    It is also a context manager: `async with timeout:` cancels the block
    like `asyncio.timeout` and raises `DeadlineExceededError`; `with
    timeout:` runs the block inside the deadline, not pre-empted. Entering
    gives the `resilience.Deadline` in force. One object may be entered by
    many threads and tasks at once: each block keeps its state per context.

    If an enclosing deadline is already spent when the call would start, the
    function is not called (sync or async) and a block is not entered:
    `DeadlineExceededError` is raised with `before_call=True` and
    `budget=0.0`, counted and published like a cut call. A coroutine
    returned to `call()`, or a plain value to `acall()`, raises
    `resilience.MisuseError`.

    Args:
        seconds: The time allowed per call (> 0; a number or a `datetime.timedelta`).
        name: Names the timeout in errors, events and metrics.
        clock: A `resilience.Clock` for the deadline. Async calls are
            cancelled on the event loop's own clock, unless the clock keeps
            alarms (`resilience.testing.FakeClock`): then they are cancelled
            when that clock passes the deadline.
    """

    def __init__(self, seconds: float, *, name: str = "timeout", clock: Clock | None = None):
        self.seconds = check_seconds(seconds, "seconds")
        self.name = check_string(name, "name")
        self.clock = resolve_clock(clock)
        # A fake clock's alarms cut async calls; None: the event loop's timer does.
        self._call_at = alarms_of(self.clock)
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
            if self._call_at is not None:
                return await self._acall_on_alarms(entered, fn, args, kwargs)
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

    async def _acall_on_alarms(
        self,
        entered: Deadline,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        """`acall` with a clock that keeps alarms: the cut comes when that clock says so."""
        cut = _Cut(entered, self._call_at)
        await cut.enter()
        pending: Any = _NOTHING
        try:
            pending = fn(*args, **kwargs)
            result: R = await pending
        except BaseException as exc:
            if await cut.exit(type(exc), exc, exc.__traceback__):
                raise self._exceeded_error(entered.budget) from cut.cause
            if isinstance(exc, TypeError):
                misuse = not_awaitable(self, fn, pending)
                if misuse is not None:
                    raise misuse from None
            raise
        await cut.exit(None, None, None)
        return result

    # -- as a context manager --------------------------------------------------------

    def __enter__(self) -> Deadline:
        """Open a deadline of `seconds` for the block (not pre-empted)."""
        token, entered = enter_deadline(self.seconds, self.clock)
        if entered.budget <= 0:
            leave_deadline(token)
            raise self._exceeded_error(0.0, before_call=True)
        _blocks.set(_Block(self, token, None, _blocks.get()))
        return entered

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        block = self._pop_block()
        leave_deadline(block.token)

    async def __aenter__(self) -> Deadline:
        """Open a deadline of `seconds` and cancel the block when it passes."""
        token, entered = enter_deadline(self.seconds, self.clock)
        try:
            if entered.budget <= 0:
                raise self._exceeded_error(0.0, before_call=True)
            cut = _Cut(entered, self._call_at)
            await cut.enter()
        except BaseException:
            leave_deadline(token)
            raise
        _blocks.set(_Block(self, token, cut, _blocks.get()))
        return entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        block = self._pop_block()
        try:
            cut = block.cut
            if cut is None:  # entered with a plain `with`
                return False
            if await cut.exit(exc_type, exc, traceback):
                raise self._exceeded_error(cut.budget) from cut.cause
            return False
        finally:
            leave_deadline(block.token)

    def _pop_block(self) -> _Block:
        """Remove this timeout's innermost block in this context and return it."""
        block = _blocks.get()
        above: list[_Block] = []
        while block is not None and block.timeout is not self:
            above.append(block)
            block = block.outer
        if block is None:
            raise RuntimeError(
                "Timeout.__exit__ without a matching __enter__ in this thread or task: "
                "a `with` block must end where it began"
            )
        if above:
            # Deadlines nest: leaving this one first would restore a stale
            # deadline for the blocks still open, and keep it after them.
            raise RuntimeError(
                "Timeout blocks must end innermost first: this one is still enclosing "
                f"{len(above)} open block(s) of another Timeout in this thread or task"
            )
        _blocks.set(block.outer)
        return block

    # -- reporting ----------------------------------------------------------------------

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


class _Block:
    """One entered `with timeout:` block (a node of a per-context stack)."""

    __slots__ = ("cut", "outer", "timeout", "token")

    def __init__(
        self,
        timeout: Timeout,
        token: Token[Deadline | None],
        cut: _Cut | None,
        outer: _Block | None,
    ) -> None:
        self.timeout = timeout
        self.token = token
        self.cut = cut
        self.outer = outer


# The timeout blocks entered in this thread or task, innermost first: per
# context, so that one Timeout can be entered by many threads and tasks at once.
_blocks: ContextVar[_Block | None] = ContextVar("resilience_timeout_blocks", default=None)


class _Cut:
    """The cancellation of one async block: asyncio's or trio's, on a clock's alarms or the loop's.

    With `call_at` None, the event loop's own timer ends the block after
    `budget` seconds (`asyncio.timeout`, a trio deadline). With a clock's
    `call_at`, an alarm at the deadline's `expires_at` cancels it: directly
    when the alarm fires in the loop's thread (so a fake sleep inside the
    block is itself cut), through the loop's thread-safe entry otherwise.
    """

    __slots__ = (
        "_alarm",
        "_call_at",
        "_expires_at",
        "_live",
        "_loop",
        "_scope",
        "_thread",
        "_trio",
        "budget",
        "cause",
    )

    def __init__(
        self,
        entered: Deadline,
        call_at: Callable[[float, Callable[[], object]], Cancellable] | None,
    ) -> None:
        self.budget = entered.budget
        self._expires_at = entered.expires_at
        self._call_at = call_at
        self._alarm: Cancellable | None = None
        self._live = False
        self._loop: Any = None  # the asyncio loop, or the trio token
        self._scope: Any = None
        self._trio = False
        self._thread = 0
        #: What to chain the DeadlineExceededError to, once the block was cut.
        self.cause: BaseException | None = None

    async def enter(self) -> None:
        asyncio = sys.modules.get("asyncio")
        fake = self._call_at is not None
        if asyncio is not None and _asyncio_running(asyncio):
            self._scope = asyncio.timeout(None if fake else self.budget)
            await self._scope.__aenter__()
            self._loop = asyncio.get_running_loop()
        else:
            import trio

            self._trio = True
            self._scope = trio.CancelScope(
                deadline=math.inf if fake else trio.current_time() + self.budget
            )
            self._scope.__enter__()
            self._loop = trio.lowlevel.current_trio_token()
        if self._call_at is not None:
            self._thread = threading.get_ident()
            self._live = True
            self._alarm = self._call_at(self._expires_at, self._fire)

    def _fire(self) -> None:
        """The alarm: cancel the block, from whichever thread moved the clock."""
        if threading.get_ident() == self._thread:
            try:
                self._expire()
            except RuntimeError:  # the loop's thread, but the loop is not running now
                pass
            else:
                return
        try:
            if self._trio:
                self._loop.run_sync_soon(self._expire)
            else:
                self._loop.call_soon_threadsafe(self._expire)
        except RuntimeError:  # the loop is gone (trio.RunFinishedError is one too)
            pass

    def _expire(self) -> None:
        if not self._live:
            return  # the block ended first
        if self._trio:
            self._scope.cancel()
        else:
            self._scope.reschedule(self._loop.time())  # asyncio.timeout's own cut, now

    async def exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """Leave the scope; True if this cut ended the block (raise the timeout error)."""
        self._live = False
        if self._alarm is not None:
            self._alarm.cancel()
        if self._trio:
            suppressed = self._scope.__exit__(exc_type, exc, traceback)
            return bool(suppressed) and self._scope.cancelled_caught
        try:
            await self._scope.__aexit__(exc_type, exc, traceback)
        except TimeoutError as error:  # asyncio.timeout turned its own cancellation into this
            self.cause = error
            return True
        return False


def _asyncio_running(asyncio: Any) -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
