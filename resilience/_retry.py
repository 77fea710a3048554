"""Retry: call again what failed transiently, within attempts, deadline and budget."""

from __future__ import annotations

import datetime
import itertools
import math
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._awaitable import PLAIN_TYPES, is_awaitable_type
from ._backoff import Backoff, retry_after_of
from ._budget import RetryBudget
from ._clock import Clock, resolve_clock
from ._compose import _NOTHING, MisuseError, Policy, not_awaitable, returned_awaitable
from ._counter import peek
from ._deadline import current_deadline
from ._outcome import ExceptionFilter, ExceptionSpec
from ._tracking import track
from ._validate import check_bool, check_int, check_seconds, check_string
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    ResilienceError,
    RetryBudgetExhaustedError,
)
from .events import ObserverHub, RetryBudgetExhausted, RetryGaveUp, RetryScheduled, global_hub

__all__ = ["Retry", "RetryExhaustedError"]

P = ParamSpec("P")
R = TypeVar("R")

#: A wait: seconds, a `Backoff`, or a tenacity wait strategy.
Wait = float | datetime.timedelta | Backoff | Callable[[Any], float]


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


# The default names of `Retry(name=)` and `RetryBudget(name)`: a name left at its default.
_DEFAULT_NAME = "retry"
_DEFAULT_BUDGET_NAME = "retry-budget"

# A discard hook for the calls made in this context, for callers that use a
# Retry or a Hedge they do not own (the httpx transport closes the failed and
# the losing responses with it).
_discard_for_this_call: ContextVar[Callable[[Any], object] | None] = ContextVar(
    "resilience_retry_discard", default=None
)


class FastRetries:
    """What `resilience.testing.fast_retries` switched on in this context (a node of a stack)."""

    __slots__ = ("attempts", "outer", "owner")

    def __init__(
        self, attempts: int | None, owner: object = None, outer: FastRetries | None = None
    ) -> None:
        #: The most calls per logical call, or None for each policy's own.
        self.attempts = attempts
        #: The `fast_retries` object whose block set this node.
        self.owner = owner
        #: What was in force before that block.
        self.outer = outer


# Set by `resilience.testing.fast_retries`; read only when a retry is being planned,
# never on a first-try success.
_fast_retries: ContextVar[FastRetries | None] = ContextVar("resilience_fast_retries", default=None)


class _Attempts:
    """One call's retry state: kept per call, so one policy serves every thread and task."""

    __slots__ = ("ended_at", "longest", "number", "slept", "started")

    def __init__(self, started: float, first_ended: float) -> None:
        #: When the first attempt started.
        self.started = started
        #: The number of the attempt that just failed (1 is the first call).
        self.number = 1
        #: The longest attempt so far: the estimate of the next one.
        self.longest = first_ended - started
        #: When the last attempt ended.
        self.ended_at = first_ended
        #: Seconds slept between attempts so far.
        self.slept = 0.0

    def ended(self, begun: float, now: float) -> None:
        self.longest = max(self.longest, now - begun)
        self.ended_at = now


class Retry(Policy):
    """Call again after a transient failure: bounded, jittered, deadline- and budget-aware.

    ```python
    retry = resilience.Retry(on=(httpx.TransportError,), attempts=3)

    @retry
    def fetch(url: str) -> bytes: ...
    ```

    - `attempts` counts calls, the first included: 3 means at most 3 calls.
    - Only exceptions matching `on` are retried, never cancellation or other
      non-`Exception`s. resilience's own rejections are not retried by a broad
      `on`: `CircuitOpenError` only with `retry_circuit_open=True`,
      `BulkheadFullError` only when `on` names it (or a subclass) as a type,
      and never `RetryBudgetExhaustedError`, a `DeadlineExceededError` with
      `before_call=True` (the deadline was spent before the call started) or
      a misuse `TypeError` (sync/async mix-up). `retry_if_result` retries on
      returned values.
    - The wait before retry n is `wait(n)` (default: `Backoff()`, full
      jitter), but never shorter than a Retry-After the server sent (see
      `parse_retry_after`); above `max_retry_after` (inf included) the call
      gives up at once (the delay is in the note).
    - Inside a `deadline`, no retry starts that cannot finish before it.
    - With a `budget`, every call deposits and every retry withdraws.
    - When it gives up, the last exception propagates as itself with a note
      (attempts, time, reason); a failing result is returned, or raised as
      `RetryExhaustedError` with `raise_on_result=True`.
    - `call()` takes sync functions and `acall()` async ones: a coroutine (or
      any awaitable) returned to `call()`, or a plain value returned to
      `acall()`, raises a `TypeError` at once, counted nowhere and not retried.

    A successful first attempt costs one clock read (for the total time in
    a give-up note) and builds no tenacity state. One policy is shared safely by threads and
    tasks: each call keeps its own state.

    Args:
        on: Exceptions to retry: types, predicates, or a tuple of them
            (required; pass `()` to retry on results only, with `retry_if_result`).
        attempts: Calls at most, first included (an int >= 1).
        wait: Seconds (a number or `datetime.timedelta`, >= 0), a
            `resilience.Backoff`, or a tenacity wait strategy (an instance of
            `tenacity.wait.wait_base`, called with a `tenacity.RetryCallState`
            built only on a retry, its times read from `clock`).
        retry_if_result: Predicate on a returned value that asks for a retry.
        budget: A `RetryBudget` shared by every caller of the downstream.
        max_retry_after: Longest server-requested wait honoured, seconds or a
            `datetime.timedelta` (finite, >= 0).
        raise_on_result: Raise `RetryExhaustedError` instead of returning the
            last failing result.
        retry_circuit_open: Retry `CircuitOpenError` from an inner breaker
            (waiting for its `retry_after`).
        discard_result: Called with a failing result that is about to be
            retried (e.g. to close an HTTP response so its connection goes
            back to the pool); awaited if it returns an awaitable in async code.
        name: Names the policy in notes, events and metrics. Left at its
            default ("retry") with a `budget` that has a name of its own, the
            policy takes the budget's name: both name the downstream.
        clock: A `resilience.Clock`; a FakeClock makes waits instant in tests
            (so does `resilience.testing.fast_retries`, for every policy).
    """

    def __init__(
        self,
        *,
        on: ExceptionSpec,
        attempts: int = 3,
        wait: Wait | None = None,
        retry_if_result: Callable[[Any], object] | None = None,
        budget: RetryBudget | None = None,
        max_retry_after: float | datetime.timedelta = 60.0,
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
        if not self.on and retry_if_result is None:
            raise ValueError(
                "on=() and no retry_if_result=: nothing would ever be retried; "
                "name the exceptions to retry in on= or pass retry_if_result="
            )
        self.retry_if_result = retry_if_result
        # BulkheadFullError is retried only when on= names it (or a subclass) as a type.
        self._named_bulkhead = tuple(t for t in self.on.types if issubclass(t, BulkheadFullError))
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget= must be a resilience.RetryBudget, got {budget!r}")
        self.budget = budget
        if name == _DEFAULT_NAME and budget is not None and budget.name != _DEFAULT_BUDGET_NAME:
            # An unnamed retry is named after the downstream its budget names.
            self.name = budget.name
        self.max_retry_after = check_seconds(max_retry_after, "max_retry_after", allow_zero=True)
        self.raise_on_result = check_bool(raise_on_result, "raise_on_result")
        self.retry_circuit_open = check_bool(retry_circuit_open, "retry_circuit_open")
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
        self._cancelled: itertools.count[int] = itertools.count()
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
                self._not_retried(exc, self._failed_not_retryable)
                raise
            failure = exc
        except BaseException:  # KeyboardInterrupt, SystemExit: the call ends, uncounted else
            next(self._cancelled)
            raise
        else:
            if type(result) not in PLAIN_TYPES and is_awaitable_type(type(result)):
                raise returned_awaitable(self, fn, result)  # misuse: counted nowhere
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_first_try)
                return result
        # Outside the except block, so a later attempt's error is not chained to this one.
        try:
            return self._retry_sync(fn, args, kwargs, failure, None if failure else result, started)
        except Exception:
            raise
        except BaseException:
            next(self._cancelled)
            raise

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
            if exc is None:
                # Before the wait: a response must not hold its connection. The
                # caller's hook first, then the transport's (which closes it).
                for discard in (self.discard_result, _discard_for_this_call.get()):
                    if discard is not None:
                        discard(result)
            if delay > 0:  # a zero wait makes no sleep call at all
                self.clock.sleep(delay)
                attempts.slept += delay
            attempts.number += 1
            begun = self._monotonic()
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                attempts.ended(begun, self._monotonic())
                exc, result = error, None
                if not self._retryable(error):
                    self._not_retried(error, self._failed_after_retry)
                    raise
                continue
            attempts.ended(begun, self._monotonic())
            if type(result) not in PLAIN_TYPES and is_awaitable_type(type(result)):
                raise returned_awaitable(self, fn, result)
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
        pending: Any = _NOTHING
        try:
            pending = fn(*args, **kwargs)
            result: R = await pending
        except Exception as exc:
            if isinstance(exc, TypeError):
                # A plain value (a sync function) fails the await: misuse, checked only here.
                misuse = not_awaitable(self, fn, pending)
                if misuse is not None:
                    raise misuse from None
            if not self._retryable(exc):
                self._not_retried(exc, self._failed_not_retryable)
                raise
            failure = exc
        except BaseException:  # cancelled (asyncio, trio) or interrupted
            next(self._cancelled)
            raise
        else:
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_first_try)
                return result
        try:
            return await self._retry_async(
                fn, args, kwargs, failure, None if failure else result, started
            )
        except Exception:
            raise
        except BaseException:
            next(self._cancelled)
            raise

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
            if exc is None:
                for discard in (self.discard_result, _discard_for_this_call.get()):
                    if discard is not None:
                        discarded = discard(result)
                        if hasattr(discarded, "__await__"):
                            await discarded
            if delay > 0:
                await self.clock.asleep(delay)
                attempts.slept += delay
            attempts.number += 1
            begun = self._monotonic()
            pending: Any = _NOTHING
            try:
                pending = fn(*args, **kwargs)
                result = await pending
            except Exception as error:
                attempts.ended(begun, self._monotonic())
                if isinstance(error, TypeError):
                    misuse = not_awaitable(self, fn, pending)
                    if misuse is not None:
                        raise misuse from None
                exc, result = error, None
                if not self._retryable(error):
                    self._not_retried(error, self._failed_after_retry)
                    raise
                continue
            attempts.ended(begun, self._monotonic())
            exc = None
            if self.retry_if_result is None or not self.retry_if_result(result):
                next(self._success_after_retry)
                return cast(R, result)

    # -- decisions ----------------------------------------------------------------

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, ResilienceError) and not self._may_retry_own(exc):
            return False
        return self.on.matches(exc)

    def _may_retry_own(self, exc: Exception) -> bool:
        """Whether one of resilience's own errors may be retried at all (then `on` decides)."""
        if isinstance(exc, MisuseError):  # a programming error, also from a nested policy
            return False
        if isinstance(exc, CircuitOpenError):
            return self.retry_circuit_open
        if isinstance(exc, BulkheadFullError):
            # A full bulkhead is local and transient: retried with backoff when
            # asked for by name, not by a broad on=Exception.
            return bool(self._named_bulkhead) and isinstance(exc, self._named_bulkhead)
        if isinstance(exc, RetryBudgetExhaustedError):
            return False  # retrying it would spend what the budget refused
        if isinstance(exc, DeadlineExceededError):
            return not exc.before_call  # a spent deadline stays spent
        return True

    def _not_retried(self, exc: Exception, counter: itertools.count[int]) -> None:
        """Count a call that ends on an error that is not retried; misuse is counted nowhere."""
        if not isinstance(exc, MisuseError):
            next(counter)

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
        fast = _fast_retries.get()  # only here: a first-try success never reads it
        if attempt >= self.attempts or (
            fast is not None and fast.attempts is not None and attempt >= fast.attempts
        ):
            return "attempts"
        outcome = exc if exc is not None else result
        server_wait = retry_after_of(outcome)
        if server_wait is not None and server_wait > self.max_retry_after:
            asked = "inf" if math.isinf(server_wait) else f"{server_wait:.3f}s"
            return f"retry_after {asked} > max_retry_after {self.max_retry_after:.3f}s"
        # Computed even under fast_retries, so a broken wait strategy still fails tests.
        delay = self._compute_wait(attempts, exc, result, fn, args, kwargs)
        delay = 0.0 if fast is not None else max(delay, server_wait or 0.0)
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
                    status=_status_of(outcome),
                )
            )
        return delay

    def _compute_wait(
        self,
        attempts: _Attempts,
        exc: Exception | None,
        result: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> float:
        if not self._tenacity_wait:
            return self._wait(attempts.number)
        import tenacity

        state = tenacity.RetryCallState(None, fn, args, kwargs)  # type: ignore[arg-type]
        state.attempt_number = attempts.number
        if exc is not None:
            state.set_exception((type(exc), exc, exc.__traceback__))
        else:
            state.set_result(result)
        # tenacity stamps these with time.monotonic(); the policy's clock is the one that
        # counts (a FakeClock in tests), so seconds_since_start is policy time.
        state.start_time = attempts.started
        state.outcome_timestamp = attempts.ended_at
        state.idle_for = attempts.slept
        seconds = self._wait(state)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"wait={self._wait!r} returned {seconds!r}, not a number of seconds")
        if not (0 <= seconds < math.inf):
            raise ValueError(
                f"wait={self._wait!r} returned {seconds!r}: a wait must be finite and >= 0"
            )
        return float(seconds)

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
        """Calls by outcome, retries made, and retries refused by the budget.

        `cancelled` counts calls ended by a cancellation (asyncio, trio) or an
        interrupt (a `BaseException` that is not an `Exception`), during an
        attempt or a wait: with the four outcomes, every call is counted once
        (a misuse, a `MisuseError`, is counted nowhere).
        """
        return {
            "success_first_try": peek(self._success_first_try),
            "success_after_retry": peek(self._success_after_retry),
            "failed_after_retry": peek(self._failed_after_retry),
            "failed_not_retryable": peek(self._failed_not_retryable),
            "retries": peek(self._retries),
            "budget_exhausted": peek(self._budget_exhausted),
            "cancelled": peek(self._cancelled),
        }

    def __repr__(self) -> str:
        return f"Retry(name={self.name!r}, on={self.on!r}, attempts={self.attempts})"


def _status_of(outcome: object) -> int | None:
    """The HTTP status of a response outcome, or of an exception's `.response`; else None.

    A response is anything with an int `status_code` (httpx, requests); an
    exception such as `httpx.HTTPStatusError` carries one as `.response`.
    """
    try:
        for candidate in (outcome, getattr(outcome, "response", None)):
            status = getattr(candidate, "status_code", None)
            if isinstance(status, int) and not isinstance(status, bool):
                return int(status)
    except Exception:  # noqa: BLE001  (a property that fails: no status, never a broken call)
        return None
    return None


def _resolve_wait(wait: Wait | None) -> tuple[Callable[[Any], float], bool]:
    """Return (wait function, whether it takes a tenacity RetryCallState)."""
    if wait is None:
        return Backoff(), False
    if isinstance(wait, Backoff):
        return wait, False
    if isinstance(wait, (int, float, datetime.timedelta)) and not isinstance(wait, bool):
        seconds = check_seconds(wait, "wait", allow_zero=True)
        return (lambda attempt: seconds), False
    kind = _tenacity_kind(wait)
    if kind == "wait":
        return cast(Callable[[Any], float], wait), True
    if kind == "stop":
        raise TypeError(
            f"wait= got the tenacity stop strategy {wait!r}: a Retry stops after attempts= "
            f"calls, or at the enclosing deadline (resilience.deadline); wait= takes how "
            f"long to wait (tenacity.wait_*)"
        )
    if kind == "retry":
        raise TypeError(
            f"wait= got the tenacity retry condition {wait!r}: say what to retry with on= "
            f"(exceptions) and retry_if_result= (results); wait= takes how long to wait"
        )
    if kind == "retrying":
        raise TypeError(
            f"wait= got a tenacity.Retrying object {wait!r}: pass its wait strategy "
            f"(tenacity.wait_*), and its stop and retry settings as attempts= and on="
        )
    raise TypeError(
        f"wait= takes seconds (a number or datetime.timedelta), a resilience.Backoff, or a "
        f"tenacity wait strategy (an instance of tenacity.wait.wait_base: tenacity.wait_* or "
        f"a subclass), got {wait!r}; for a function of the attempt, subclass "
        f"tenacity.wait.wait_base and read retry_state.attempt_number"
    )


def _tenacity_kind(value: object) -> str | None:
    """Which kind of tenacity object `value` is, without importing tenacity.

    A tenacity object cannot exist unless its module is loaded, so the
    modules already in `sys.modules` are enough to tell.
    """
    for module, base, kind in (
        ("tenacity.wait", "wait_base", "wait"),
        ("tenacity.stop", "stop_base", "stop"),
        ("tenacity.retry", "retry_base", "retry"),
        ("tenacity", "BaseRetrying", "retrying"),
    ):
        loaded = sys.modules.get(module)
        cls = getattr(loaded, base, None)
        if isinstance(cls, type) and isinstance(value, cls):
            return kind
    return None
