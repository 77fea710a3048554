"""Retry: call again what failed transiently, within attempts, deadline and budget."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._backoff import Backoff, retry_after_of
from ._budget import RetryBudget
from ._clock import Clock, resolve_clock
from ._compose import Policy
from ._counter import peek
from ._deadline import current_deadline
from ._outcome import ExceptionFilter, ExceptionSpec
from ._tracking import track
from ._validate import check_int, check_seconds, check_string
from .errors import CircuitOpenError, ResilienceError
from .events import ObserverHub, RetryBudgetExhausted, RetryGaveUp, RetryScheduled, global_hub

__all__ = ["Retry", "RetryExhaustedError"]

P = ParamSpec("P")
R = TypeVar("R")

#: A wait: seconds, a `Backoff`, or a tenacity wait strategy.
Wait = float | Backoff | Callable[[Any], float]


class RetryExhaustedError(ResilienceError):
    """Every attempt returned a failing result, and `raise_on_result=True` asked for an error.

    `RetryExhaustedError(name, attempts, last_result)`.
    """

    if TYPE_CHECKING:

        def __init__(self, name: str, attempts: int, last_result: object) -> None: ...

    @property
    def name(self) -> str:
        """The retry policy's name."""
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def attempts(self) -> int:
        """Calls made, the first included."""
        return self.args[1]  # type: ignore[no-any-return]

    @property
    def last_result(self) -> object:
        """What the last attempt returned."""
        return self.args[2]

    def __str__(self) -> str:
        return f"retry {self.name!r}: all {self.attempts} attempts returned a failing result"


# A discard hook for the calls made in this context, for callers that use a
# Retry they do not own (the httpx transport closes failed responses with it).
_discard_for_this_call: ContextVar[Callable[[Any], object] | None] = ContextVar(
    "resilience_retry_discard", default=None
)


class _Attempts:
    """One call's retry state: kept per call, so one policy serves every thread and task."""

    __slots__ = ("longest", "number", "started")

    def __init__(self, started: float, first_ended: float) -> None:
        #: When the first attempt started.
        self.started = started
        #: The number of the attempt that just failed (1 is the first call).
        self.number = 1
        #: The longest attempt so far: the estimate of the next one.
        self.longest = first_ended - started

    def ended(self, begun: float, now: float) -> None:
        self.longest = max(self.longest, now - begun)


class Retry(Policy):
    """Call again after a transient failure: bounded, jittered, deadline- and budget-aware.

    ```python
    retry = resilience.Retry(on=(httpx.TransportError,), attempts=3)

    @retry
    def fetch(url: str) -> bytes: ...
    ```

    - `attempts` counts calls, the first included: 3 means at most 3 calls.
    - Only exceptions matching `on` are retried, never cancellation or other
      non-`Exception`s, and not `CircuitOpenError` unless
      `retry_circuit_open=True`. `retry_if_result` retries on returned values.
    - The wait before retry n is `wait(n)` (default: `Backoff()`, full
      jitter), but never shorter than a Retry-After the server sent; above
      `max_retry_after` the call gives up at once (the delay is in the note).
    - Inside a `deadline`, no retry starts that cannot finish before it.
    - With a `budget`, every call deposits and every retry withdraws.
    - When it gives up, the last exception propagates as itself with a note
      (attempts, time, reason); a failing result is returned, or raised as
      `RetryExhaustedError` with `raise_on_result=True`.

    A successful first attempt costs one clock read (for the total time in
    a give-up note) and builds no tenacity state. One policy is shared safely by threads and
    tasks: each call keeps its own state.

    Args:
        on: Exceptions to retry: types, predicates, or a tuple of them
            (required; pass `()` to retry on results only).
        attempts: Calls at most, first included (>= 1).
        wait: Seconds, a `resilience.Backoff`, or a tenacity wait strategy
            (called with a `tenacity.RetryCallState` built only on a retry).
        retry_if_result: Predicate on a returned value that asks for a retry.
        budget: A `RetryBudget` shared by every caller of the downstream.
        max_retry_after: Longest server-requested wait honoured, seconds.
        raise_on_result: Raise `RetryExhaustedError` instead of returning the
            last failing result.
        retry_circuit_open: Retry `CircuitOpenError` from an inner breaker
            (waiting for its `retry_after`).
        discard_result: Called with a failing result that is about to be
            retried (e.g. to close an HTTP response so its connection goes
            back to the pool); awaited if it returns an awaitable in async code.
        name: Names the policy in notes, events and metrics.
        clock: A `resilience.Clock`; a FakeClock makes waits instant in tests.
    """

    def __init__(
        self,
        *,
        on: ExceptionSpec,
        attempts: int = 3,
        wait: Wait | None = None,
        retry_if_result: Callable[[Any], object] | None = None,
        budget: RetryBudget | None = None,
        max_retry_after: float = 60.0,
        raise_on_result: bool = False,
        retry_circuit_open: bool = False,
        discard_result: Callable[[Any], object] | None = None,
        name: str = "retry",
        clock: Clock | None = None,
    ) -> None:
        self.name = check_string(name, "name")
        self.on = ExceptionFilter(on, param="on")
        self.attempts = check_int(attempts, "attempts")
        self._wait, self._tenacity_wait = _resolve_wait(wait)
        if retry_if_result is not None and not callable(retry_if_result):
            raise TypeError(f"retry_if_result= must be callable(result), got {retry_if_result!r}")
        self.retry_if_result = retry_if_result
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget= must be a resilience.RetryBudget, got {budget!r}")
        self.budget = budget
        self.max_retry_after = check_seconds(max_retry_after, "max_retry_after", allow_zero=True)
        self.raise_on_result = _check_bool(raise_on_result, "raise_on_result")
        self.retry_circuit_open = _check_bool(retry_circuit_open, "retry_circuit_open")
        if discard_result is not None and not callable(discard_result):
            raise TypeError(f"discard_result= must be callable(result), got {discard_result!r}")
        self.discard_result = discard_result
        self.clock = resolve_clock(clock)
        self._monotonic = self.clock.monotonic
        #: This policy's observers; forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)
        self._success_first_try: itertools.count[int] = itertools.count()
        self._success_after_retry: itertools.count[int] = itertools.count()
        self._failed_after_retry: itertools.count[int] = itertools.count()
        self._failed_not_retryable: itertools.count[int] = itertools.count()
        self._retries: itertools.count[int] = itertools.count()
        self._budget_exhausted: itertools.count[int] = itertools.count()
        track("retry", self)

    # -- the loop ---------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call `fn(*args, **kwargs)`, retrying as configured."""
        if self.budget is not None:
            self.budget.deposit()
        failure: Exception | None = None
        started = self._monotonic()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not self._retryable(exc):
                next(self._failed_not_retryable)
                raise
            failure = exc
        else:
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_first_try)
                return result
        # Outside the except block, so a later attempt's error is not chained to this one.
        return self._retry_sync(fn, args, kwargs, failure, None if failure else result, started)

    def _retry_sync(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: Exception | None,
        result: Any,
        started: float,
    ) -> R:
        attempts = _Attempts(started, self._monotonic())
        while True:
            delay = self._plan(attempts, exc, result, fn, args, kwargs)
            if isinstance(delay, str):
                return cast(R, self._give_up(delay, attempts, exc, result))
            discard = self.discard_result or _discard_for_this_call.get()
            if exc is None and discard is not None:
                discard(result)  # before the wait: a response must not hold its connection
            if delay > 0:  # a zero wait makes no sleep call at all
                self.clock.sleep(delay)
            attempts.number += 1
            begun = self._monotonic()
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                attempts.ended(begun, self._monotonic())
                exc, result = error, None
                if not self._retryable(error):
                    next(self._failed_after_retry)
                    raise
                continue
            attempts.ended(begun, self._monotonic())
            exc = None
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_after_retry)
                return cast(R, result)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)`, retrying as configured."""
        if self.budget is not None:
            self.budget.deposit()
        failure: Exception | None = None
        started = self._monotonic()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self._retryable(exc):
                next(self._failed_not_retryable)
                raise
            failure = exc
        else:
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_first_try)
                return result
        return await self._retry_async(
            fn, args, kwargs, failure, None if failure else result, started
        )

    async def _retry_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: Exception | None,
        result: Any,
        started: float,
    ) -> R:
        attempts = _Attempts(started, self._monotonic())
        while True:
            delay = self._plan(attempts, exc, result, fn, args, kwargs)
            if isinstance(delay, str):
                return cast(R, self._give_up(delay, attempts, exc, result))
            discard = self.discard_result or _discard_for_this_call.get()
            if exc is None and discard is not None:
                discarded = discard(result)
                if hasattr(discarded, "__await__"):
                    await discarded
            if delay > 0:
                await self.clock.asleep(delay)
            attempts.number += 1
            begun = self._monotonic()
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                attempts.ended(begun, self._monotonic())
                exc, result = error, None
                if not self._retryable(error):
                    next(self._failed_after_retry)
                    raise
                continue
            attempts.ended(begun, self._monotonic())
            exc = None
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_after_retry)
                return cast(R, result)

    # -- decisions ----------------------------------------------------------------

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, CircuitOpenError) and not self.retry_circuit_open:
            return False
        return self.on.matches(exc)

    def _plan(
        self,
        attempts: _Attempts,
        exc: Exception | None,
        result: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> float | str:
        """The wait before the next attempt, or why not to make one."""
        attempt = attempts.number
        if attempt >= self.attempts:
            return "attempts"
        outcome = exc if exc is not None else result
        server_wait = retry_after_of(outcome)
        if server_wait is not None and server_wait > self.max_retry_after:
            return f"retry_after {server_wait:.3f}s > max_retry_after"
        delay = self._compute_wait(attempt, exc, result, attempts.started, fn, args, kwargs)
        delay = max(delay, server_wait or 0.0)
        now = self.clock.monotonic()
        deadline = current_deadline()
        if deadline is not None:
            left = deadline.remaining()
            # The longest attempt so far estimates the next one: a retry that
            # cannot finish before the deadline is not started.
            if delay + attempts.longest >= left:
                return "deadline"
        if self.budget is not None and not self.budget.try_withdraw():
            next(self._budget_exhausted)
            if self.events.active:
                self.events.publish(RetryBudgetExhausted(name=self.budget.name, time=now))
            return "budget"
        next(self._retries)
        if self.events.active:
            self.events.publish(
                RetryScheduled(
                    name=self.name,
                    time=now,
                    attempt=attempt,
                    delay=delay,
                    error_type=None if exc is None else type(exc).__name__,
                )
            )
        return delay

    def _compute_wait(
        self,
        attempt: int,
        exc: Exception | None,
        result: Any,
        started: float,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> float:
        if not self._tenacity_wait:
            return self._wait(attempt)
        import tenacity

        state = tenacity.RetryCallState(None, fn, args, kwargs)  # type: ignore[arg-type]
        state.start_time = started
        state.attempt_number = attempt
        if exc is not None:
            state.set_exception((type(exc), exc, exc.__traceback__))
        else:
            state.set_result(result)
        seconds = self._wait(state)
        return check_seconds(seconds, "wait() result", allow_zero=True)

    def _give_up(self, reason: str, attempts: _Attempts, exc: Exception | None, result: Any) -> Any:
        attempt, started = attempts.number, attempts.started
        elapsed = self._monotonic() - started
        # A call that gave up before any retry (attempts=1, budget, deadline,
        # Retry-After) was never retried: it is not a "failed after retry".
        next(self._failed_after_retry if attempt > 1 else self._failed_not_retryable)
        if self.events.active:
            self.events.publish(
                RetryGaveUp(
                    name=self.name,
                    time=started + elapsed,
                    attempts=attempt,
                    elapsed=elapsed,
                    error_type=None if exc is None else type(exc).__name__,
                    reason=reason.split(" ", 1)[0],
                )
            )
        note = (
            f"resilience: retry {self.name!r} gave up after {attempt} "
            f"attempt{'s' if attempt != 1 else ''} in {elapsed:.3f}s ({reason})"
        )
        if exc is not None:
            exc.add_note(note)
            raise exc
        if self.raise_on_result:
            error = RetryExhaustedError(self.name, attempt, result)
            error.add_note(note)
            raise error
        return result

    # -- reading --------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        """Calls by outcome, retries made, and retries refused by the budget."""
        return {
            "success_first_try": peek(self._success_first_try),
            "success_after_retry": peek(self._success_after_retry),
            "failed_after_retry": peek(self._failed_after_retry),
            "failed_not_retryable": peek(self._failed_not_retryable),
            "retries": peek(self._retries),
            "budget_exhausted": peek(self._budget_exhausted),
        }

    def __repr__(self) -> str:
        return f"Retry(name={self.name!r}, on={self.on!r}, attempts={self.attempts})"


def _resolve_wait(wait: Wait | None) -> tuple[Callable[[Any], float], bool]:
    """Return (wait function, whether it takes a tenacity RetryCallState)."""
    if wait is None:
        return Backoff(), False
    if isinstance(wait, Backoff):
        return wait, False
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        seconds = check_seconds(wait, "wait", allow_zero=True)
        return (lambda attempt: seconds), False
    if callable(wait) and type(wait).__module__.split(".")[0] == "tenacity":
        return wait, True
    raise TypeError(
        f"wait= takes seconds, a resilience.Backoff or a tenacity wait strategy "
        f"(tenacity.wait_*), got {wait!r}"
    )


def _check_bool(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{param}= must be True or False, got {value!r}")
    return value
