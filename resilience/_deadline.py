"""Deadlines: an absolute instant that bounds all the work done for one request.

A deadline lives in a context variable, so it follows the call through
threads' and tasks' own contexts without being passed around: the retry
policy caps its sleeps by it, the httpx transport clamps its timeouts to it
and sends it downstream. Deadlines nest as a minimum: an inner `deadline(5)`
inside an outer one with 1 s left still ends in 1 s (gRPC and Finagle do the
same).
"""

from __future__ import annotations

import math
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

from ._clock import Clock, resolve_clock
from ._validate import check_seconds

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "DEADLINE_HEADER",
    "Deadline",
    "current_deadline",
    "deadline",
    "enter_deadline",
    "leave_deadline",
    "remaining",
]

#: The header that carries a deadline between services: the milliseconds left,
#: as an integer. Sent by the httpx transport, read by the server middleware.
DEADLINE_HEADER = "x-resilience-deadline-ms"
#: Within this much of its end, a deadline counts as run out: timers may fire
#: a hair early (clock and poll rounding), and the transports set the
#: timeouts to exactly the time left.
DEADLINE_SLACK = 0.001


class Deadline:
    """An instant on a monotonic clock, with the budget it was created from.

    Made by `deadline()` (and the transport and middleware); building one by
    hand validates every argument like any other constructor.
    """

    __slots__ = ("budget", "clock", "expires_at")

    #: When the deadline passes, on `clock`.
    expires_at: float
    #: The seconds this deadline allowed when it was set (after nesting).
    budget: float
    #: The clock `expires_at` is a reading of.
    clock: Clock

    def __init__(self, expires_at: float, budget: float, clock: Clock) -> None:
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            raise TypeError(f"expires_at= must be a monotonic clock reading, got {expires_at!r}")
        if not math.isfinite(expires_at):
            raise ValueError(f"expires_at= must be finite, got {expires_at!r}")
        if clock is None:
            raise TypeError("clock= is required: the clock `expires_at` is a reading of")
        _init(
            self,
            float(expires_at),
            check_seconds(budget, "budget", allow_zero=True),
            resolve_clock(clock),
        )

    def remaining(self) -> float:
        """Seconds left; 0.0 once the deadline has passed."""
        return max(self.expires_at - self.clock.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.clock.monotonic() >= self.expires_at

    def __repr__(self) -> str:
        return f"<Deadline remaining={self.remaining():.3f}s budget={self.budget:.3f}s>"


def _init(deadline: Deadline, expires_at: float, budget: float, clock: Clock) -> None:
    deadline.expires_at = expires_at
    deadline.budget = budget
    deadline.clock = clock


def _unchecked(expires_at: float, budget: float, clock: Clock) -> Deadline:
    """A Deadline from values already known good (per request: no validation)."""
    made = _new(Deadline)
    _init(made, expires_at, budget, clock)
    return made


_new = object.__new__
_current: ContextVar[Deadline | None] = ContextVar("resilience_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline in force here, or None."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (0.0 if passed), or None without one."""
    current = _current.get()
    return None if current is None else current.remaining()


def enter_deadline(seconds: float, clock: Clock) -> tuple[Token[Deadline | None], Deadline]:
    """Set a deadline `seconds` from now (or the outer one, if sooner).

    Returns the token to leave it with and the deadline now in force. The
    unchecked core of `deadline`, for callers that validated `seconds` once at
    construction (the httpx transport and the server middleware, per request).
    """
    outer = _current.get()
    budget = seconds if outer is None else min(seconds, outer.remaining())
    entered = _unchecked(clock.monotonic() + budget, budget, clock)
    return _current.set(entered), entered


def leave_deadline(token: Token[Deadline | None]) -> None:
    """Undo `enter_deadline`."""
    _current.reset(token)


def outlive_deadline(token: Token[Deadline | None]) -> None:
    """From here on in this context, the deadline in force before `enter_deadline` applies.

    For work that outlives what the deadline was for (a server's background
    tasks, run after the response was sent); `leave_deadline(token)` still
    undoes the whole entry afterwards.
    """
    previous = token.old_value
    _current.set(None if previous is Token.MISSING else previous)


class deadline:
    """Bound everything inside the block to `seconds` from now (or less, if nested).

    ```python
    with resilience.deadline(2.0):
        reply = client.get(url)          # the transport honours the deadline
        resilience.remaining()           # seconds left
    async with resilience.deadline(2.0) as d:
        ...                              # d.remaining(), d.expired
    ```

    Entering gives the `Deadline` in force (the nested minimum). The block is
    not interrupted when time runs out: deadline-aware code (retries, the
    transport, `resilience.Timeout` on async code) stops at it. One
    `deadline` object is entered once at a time; make a new one per block.

    Args:
        seconds: The budget, >= 0 (0 means "already expired").
        clock: The clock to measure it on (a FakeClock in tests).
    """

    __slots__ = ("_clock", "_seconds", "_token")

    def __init__(self, seconds: float, *, clock: Clock | None = None) -> None:
        self._seconds = check_seconds(seconds, "seconds", allow_zero=True)
        self._clock = resolve_clock(clock)
        self._token: Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        if self._token is not None:
            raise RuntimeError("this deadline is already entered; create one per block")
        self._token, entered = enter_deadline(self._seconds, self._clock)
        return entered

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is None:
            raise RuntimeError("deadline.__exit__ without __enter__")
        leave_deadline(token)

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return f"deadline({self._seconds!r})"
