"""Hedge: send a backup attempt when the first is slow; the first good answer wins.

"The Tail at Scale" (Dean and Barroso, CACM 2013): a request not answered
after the 95th-percentile latency is sent again, and whichever answer comes
first is used; the extra load is about 5%. gRPC A6's `hedgingPolicy`
(non-fatal failures send the next hedge at once, a fatal one cancels all),
Finagle's `BackupRequestFilter` (a percentile of recent latencies, a 1 ms
floor, a budget shared with retries) and Polly v8 (the losers' cancellation
is awaited; if all fail, the primary's failure) set the rules used here.
"""

from __future__ import annotations

import inspect
import itertools
import math
import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._admission import _asyncio_loop
from ._budget import RetryBudget
from ._clock import Clock, SystemClock, alarms_of, resolve_clock
from ._compose import _NOTHING, MisuseError, Policy, is_async_callable, not_awaitable
from ._counter import peek
from ._deadline import current_deadline
from ._limit import _cancelled
from ._outcome import ExceptionFilter, ExceptionSpec, is_rejection
from ._retry import _discard_for_this_call
from ._tracking import track, untrack
from ._validate import check_int, check_ratio, check_seconds, check_string
from .events import HedgeBudgetExhausted, HedgeSent, HedgeWon, ObserverHub, global_hub

if TYPE_CHECKING:
    import datetime
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Hedge"]

P = ParamSpec("P")
R = TypeVar("R")

#: The most extra attempts: gRPC A6 caps a call at 5 attempts in all.
MAX_HEDGED_ATTEMPTS = 4
#: The reserve of the hedge's own budget, hedges per second (10 per 10 s window):
#: small, so that the ratio, not the reserve, bounds the extra load.
_RESERVE_PER_SECOND = 1.0
_DEFAULT_RATIO = 0.05


class Hedge(Policy):
    """Send extra attempts of a slow async call, within a budget; the first good answer wins.

    ```python
    hedge = resilience.Hedge()          # adaptive: a hedge after the p95 of recent latencies

    @hedge
    async def get_quote(symbol: str) -> Quote: ...
    ```

    - The first attempt starts at once. If no attempt has answered after the
      delay, the next starts, and so on every delay, up to
      `max_hedged_attempts` extra attempts. The delay is `delay` if given,
      else the `percentile` of the last `window` attempt latencies (at least
      `min_delay`), or `warmup_delay` until `min_samples` latencies are known.
    - Each hedge is taken from the budget: `budget` (a `RetryBudget` shared
      with the retries of the same downstream, which feed it: one budget for
      all extra load), else a budget of the hedge's own (hedges <= `ratio` of
      the calls of the last 10 s, plus 1 per second). A refused hedge is not
      sent, and no other hedge is sent for that call.
    - Inside a `resilience.deadline`, no hedge is sent unless the time left
      is longer than the expected duration of an attempt (the `percentile`
      latency; none is known before `min_samples`).
    - The first acceptable result wins. A failure matching `non_fatal` (or a
      result for which `non_fatal_result` is true) sends the next hedge at
      once (still within the budget); resilience's own rejections
      (`CircuitOpenError`, `BulkheadFullError`, ...) of one attempt are
      non-fatal too, but send no hedge at once (it would be refused too).
      Any other exception (a BaseException too) is fatal: every attempt is
      cancelled and it is raised, never in an exception group. If every
      attempt fails, the first attempt's outcome is raised (or returned, for
      a failing result).
    - The losers are cancelled, and the call returns only once they have
      ended (their `finally` blocks have run). Results nobody will use (a
      loser that answered too, a failing result not returned) go to
      `discard_result`. Cancelling the caller cancels every attempt, waited
      for the same way (and any result goes to `discard_result`).
    - Latency samples: each attempt that returned a result, its own duration;
      a loser cancelled after running longer than the delay, the time it ran
      (it was at least that slow); failures and earlier-cancelled attempts
      count nothing.

    Async only, on asyncio and trio: every attempt is an independent call of
    the callable, run concurrently. A sync function (decorated, or given to
    `call`) raises `resilience.MisuseError`: Python cannot cancel a thread.

    Args:
        delay: A fixed delay before each hedge, seconds or a
            `datetime.timedelta` (>= 0; 0 sends every attempt at once).
            None (the default): adaptive, as above.
        percentile: The latency percentile the adaptive delay waits for, in
            (0, 1] (default 0.95, "The Tail at Scale").
        window: How many recent latencies are kept (an int >= 1).
        min_samples: Latencies needed before the percentile is used (an int
            from 1 to `window`).
        warmup_delay: The delay until then (default 0.1 s).
        min_delay: The floor of the adaptive delay (default 1 ms, Finagle's).
        max_hedged_attempts: Extra attempts at most, 1 to 4 (default 1).
        budget: A `RetryBudget` to spend from, shared with retries.
        ratio: Without `budget`: the hedges allowed per call, in (0, 1]
            (default 0.05 = 5%).
        non_fatal: Exceptions after which the next hedge is sent at once
            (types, predicates, or a tuple; default none: any failure is
            fatal, as gRPC A6's default).
        non_fatal_result: A predicate on a returned value that makes it a
            non-fatal failure (an HTTP 503, say).
        discard_result: Called with every result that is not returned (a
            loser's, a failing one), awaited if it returns an awaitable;
            e.g. to close an HTTP response.
        name: Names the policy in events and metrics.
        clock: A `resilience.Clock`. A clock with alarms
            (`resilience.testing.FakeClock`) times the hedges in fake time.
    """

    def __init__(
        self,
        *,
        delay: float | datetime.timedelta | None = None,
        percentile: float = 0.95,
        window: int = 1000,
        min_samples: int = 20,
        warmup_delay: float | datetime.timedelta = 0.1,
        min_delay: float | datetime.timedelta = 0.001,
        max_hedged_attempts: int = 1,
        budget: RetryBudget | None = None,
        ratio: float = _DEFAULT_RATIO,
        non_fatal: ExceptionSpec = (),
        non_fatal_result: Callable[[Any], object] | None = None,
        discard_result: Callable[[Any], object] | None = None,
        name: str = "hedge",
        clock: Clock | None = None,
    ) -> None:
        self.name = check_string(name, "name")
        self.delay = None if delay is None else check_seconds(delay, "delay", allow_zero=True)
        self.percentile = check_ratio(percentile, "percentile")
        self.window = check_int(window, "window")
        self.min_samples = check_int(min_samples, "min_samples")
        if self.min_samples > self.window:
            raise ValueError(
                f"min_samples={min_samples!r} exceeds window={window!r}: the window would "
                f"never hold enough latencies to leave the warm-up"
            )
        self.warmup_delay = check_seconds(warmup_delay, "warmup_delay", allow_zero=True)
        self.min_delay = check_seconds(min_delay, "min_delay", allow_zero=True)
        self.max_hedged_attempts = check_int(max_hedged_attempts, "max_hedged_attempts")
        if self.max_hedged_attempts > MAX_HEDGED_ATTEMPTS:
            raise ValueError(
                f"max_hedged_attempts= must be at most {MAX_HEDGED_ATTEMPTS} (5 attempts in "
                f"all, gRPC A6's cap), got {max_hedged_attempts!r}"
            )
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget= must be a resilience.RetryBudget, got {budget!r}")
        self.ratio = check_ratio(ratio, "ratio")
        if budget is not None and self.ratio != _DEFAULT_RATIO:
            raise ValueError(
                f"ratio={ratio!r} with budget=: the shared budget's own ratio bounds the "
                f"hedges; set one or the other"
            )
        self.non_fatal = ExceptionFilter(non_fatal, param="non_fatal")
        for name_, value in (
            ("non_fatal_result", non_fatal_result),
            ("discard_result", discard_result),
        ):
            if value is not None and not callable(value):
                raise TypeError(f"{name_}= must be callable(result), got {value!r}")
        self.non_fatal_result = non_fatal_result
        self.discard_result = discard_result
        self.clock = resolve_clock(clock)
        self._monotonic = self.clock.monotonic
        self._call_at = alarms_of(self.clock)
        #: The budget hedges are taken from: `budget`, or the hedge's own.
        self.budget = budget if budget is not None else self._own_budget()
        # Calls deposit into a budget of the hedge's own; a shared one is fed by its retries.
        self._deposits = budget is None
        self._latencies = _Latencies(self.window)
        #: This policy's observers; forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)
        self._calls: itertools.count[int] = itertools.count()
        self._sent: itertools.count[int] = itertools.count()
        self._won: itertools.count[int] = itertools.count()
        self._refused: itertools.count[int] = itertools.count()
        self._too_late: itertools.count[int] = itertools.count()
        track("hedge", self)

    def _own_budget(self, name: str | None = None) -> RetryBudget:
        """A budget for this hedge alone: its refusals are the hedge's `refused` metric."""
        budget = RetryBudget(
            name or f"{self.name}-budget",
            ratio=self.ratio,
            min_per_second=_RESERVE_PER_SECOND,
            clock=self.clock,
        )
        untrack("budget", budget)  # not a retry budget: no resilience_retry_* series
        return budget

    # -- the delay -------------------------------------------------------------------

    def current_delay(self) -> float:
        """The delay the next hedge would wait, in seconds, from what is known now."""
        if self.delay is not None:
            return self.delay
        estimate = self._latencies.percentile(self.percentile, self.min_samples)
        if estimate is None:
            return self.warmup_delay
        return max(estimate, self.min_delay)

    def expected_duration(self) -> float:
        """An attempt's expected duration: the `percentile` latency, or 0.0 before `min_samples`."""
        estimate = self._latencies.percentile(self.percentile, self.min_samples)
        return 0.0 if estimate is None else estimate

    # -- calls --------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Refuse: hedging runs attempts concurrently, which needs async code."""
        raise _sync_misuse(fn)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        raise _sync_misuse(fn)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)`, hedged: see the class docstring."""
        if not callable(fn):
            raise _not_callable(fn)
        next(self._calls)
        if self._deposits:
            self.budget.deposit()
        race = _Race(self, fn, args, kwargs)
        asyncio = sys.modules.get("asyncio")
        try:
            if asyncio is not None and _asyncio_loop(asyncio) is not None:
                await race.on_asyncio(asyncio)
            else:
                await race.on_trio()
        except BaseException:
            race.abandoned = True  # cancelled or failed: no result reaches the caller
            raise
        finally:
            await race.discard()
            race.sample()
        return race.outcome()  # type: ignore[no-any-return]

    # -- reporting ------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        """Calls; hedges sent, won, refused by the budget, and not sent for the deadline."""
        return {
            "calls": peek(self._calls),
            "sent": peek(self._sent),
            "won": peek(self._won),
            "refused": peek(self._refused),
            "deadline": peek(self._too_late),
        }

    def _for_origin(self, name: str, budget: RetryBudget | None) -> Hedge:
        """A copy with latencies of its own (one downstream), sharing counters and events.

        With `budget` (the origin's retry budget), hedges spend from it and the
        retries feed it; without, the copy has a budget of its own, named `name`.
        """
        twin = object.__new__(Hedge)
        twin.__dict__.update(self.__dict__)
        twin._latencies = _Latencies(self.window)
        if self._deposits:
            if budget is None:
                twin.budget = self._own_budget(name)
            else:
                twin.budget, twin._deposits = budget, False
        return twin

    def _for_target(self, name: str, budget: RetryBudget | None) -> Hedge:
        """A copy named `name` (a gRPC target) with latencies and counters of its own.

        As `_for_origin` for the budget; its events also reach this hedge's
        observers, and it is in the metrics under `name` (this one stays a template).
        """
        twin = self._for_origin(name, budget)
        twin.name = name
        twin.events = ObserverHub(parent=self.events)
        twin._calls, twin._sent, twin._won = itertools.count(), itertools.count(), itertools.count()
        twin._refused, twin._too_late = itertools.count(), itertools.count()
        track("hedge", twin)
        return twin

    def __repr__(self) -> str:
        delay = "adaptive" if self.delay is None else repr(self.delay)
        return (
            f"Hedge(name={self.name!r}, delay={delay}, "
            f"max_hedged_attempts={self.max_hedged_attempts})"
        )


def _sync_misuse(fn: object) -> MisuseError:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if is_async_callable(fn):  # the right function, through the sync entry point
        return MisuseError(
            f"Hedge.call({name}): hedging has no sync API (a thread cannot be cancelled); "
            f"{name} is async: `await hedge.acall({name}, ...)`, or decorate it with `@hedge`."
        )
    return MisuseError(
        f"Hedge: {name} is not a coroutine function. Hedging runs attempts concurrently and "
        f"cancels the losers, which only async code allows (a thread cannot be cancelled): "
        f"decorate an `async def`, or `await hedge.acall(fn, ...)` with one."
    )


def _not_callable(fn: object) -> MisuseError:
    if inspect.iscoroutine(fn):
        fn.close()  # it will never run: no "never awaited" warning on top of this error
    return MisuseError(
        f"Hedge: got {type(fn).__name__} {fn!r}, not a callable. A hedge calls the function "
        f"once per attempt, and a coroutine object can be awaited only once: pass the "
        f"function and its arguments, `await hedge.acall(fetch, url)`, not `fetch(url)`."
    )


def _returned_plain(fn: object, pending: object) -> MisuseError:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return MisuseError(
        f"Hedge: {name} returned {type(pending).__name__}, not an awaitable: it ran as a "
        f"plain function. Hedging needs async code (a thread cannot be cancelled) and has "
        f"no sync API: pass an `async def` (or a callable returning an awaitable)."
    )


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a task group's `group` stands for, if it stands for one.

    The attempts keep their own errors, so a group out of the task group or
    nursery holds cancellations (trio wraps even those of the caller's own
    cancel scope), or one error of the race itself: the caller sees it plain.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    others = [exc for exc in leaves if not _cancelled(exc)]
    if not others:
        return leaves[-1] if leaves else group
    return others[0] if len(others) == 1 else group


async def _discard_all(discard: Callable[[Any], object], results: list[Any]) -> None:
    for result in results:
        try:
            discarded = discard(result)
            if hasattr(discarded, "__await__"):
                await discarded
        except Exception:  # noqa: BLE001, S112  (the call's own outcome is what matters)
            continue


class _Latencies:
    """The last `size` latencies, and a percentile of them recomputed every few samples."""

    __slots__ = ("_cached", "_lock", "_samples", "_stale")

    def __init__(self, size: int) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._cached: dict[float, float] = {}
        self._stale = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self._stale += 1
            # Sorting on every call would cost O(n log n) per call: recompute
            # once 1% of the samples held are new (every sample while few are;
            # 1% of the window, not of what it holds, would keep a large
            # window's first percentile for thousands of calls).
            if self._stale * 100 >= len(self._samples):
                self._cached.clear()

    def percentile(self, fraction: float, min_samples: int) -> float | None:
        """The nearest-rank `fraction` percentile, or None with fewer than `min_samples`."""
        cached = self._cached.get(fraction)
        if cached is not None and len(self._samples) >= min_samples:
            return cached
        with self._lock:
            if len(self._samples) < min_samples:
                return None
            ordered = sorted(self._samples)
            self._stale = 0
        value = ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]
        self._cached[fraction] = value
        return value


class _Attempt:
    """One attempt of a hedged call, and how it ended."""

    __slots__ = ("ended", "error", "failing", "has_result", "judged", "number", "result", "started")

    def __init__(self, number: int, started: float) -> None:
        self.number = number  # 1 is the first attempt
        self.started = started
        self.ended: float | None = None
        #: The attempt's exception; a BaseException (KeyboardInterrupt, a
        #: CancelledError nobody asked for) is always fatal.
        self.error: BaseException | None = None
        self.has_result = False
        self.result: Any = None
        self.failing = False  # a result that `non_fatal_result` calls a failure
        self.judged = False  # `non_fatal_result` raised: `error` is its error, always fatal


class _Race:
    """One hedged call: the attempts, the timer, and the decision."""

    def __init__(
        self,
        hedge: Hedge,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.hedge = hedge
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.started = hedge._monotonic()
        self.attempts: list[_Attempt] = []
        self.in_flight = 0
        self.done = False
        self.winner: _Attempt | None = None
        self.fatal: _Attempt | None = None
        self.failed_now = False  # a non-fatal failure: hedge at once
        self.timer_fired = False
        self.timer_round = 0
        self.stopped = False  # no more hedges for this call
        self.abandoned = False  # the call raised: every result goes to discard_result
        self.delay = hedge.current_delay()
        self.trio = False
        self._spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
        self._new_event: Callable[[], Any]
        self._wake: Any = None
        self._in_loop: Callable[[Callable[[], None]], None]
        # The pending hedge timer: a handle to cancel (an asyncio timer, a
        # clock's alarm), or for trio on real time the instant to wake at.
        self._timer: Any = None
        self._wake_at: float | None = None
        self._call_later: Callable[[float, Callable[[], None]], Any] | None = None
        self._real_time = hedge._call_at is None and type(hedge.clock) is SystemClock

    # -- backends ------------------------------------------------------------------

    async def on_asyncio(self, asyncio: Any) -> None:
        loop = asyncio.get_running_loop()
        thread = threading.get_ident()
        tasks: list[Any] = []

        def in_loop(callback: Callable[[], None]) -> None:
            if threading.get_ident() == thread:
                callback()
            else:
                loop.call_soon_threadsafe(callback)

        self._in_loop = in_loop
        self._new_event = asyncio.Event
        self._call_later = loop.call_later
        try:
            async with asyncio.TaskGroup() as group:
                self._spawn = lambda run: tasks.append(group.create_task(run()))
                try:
                    await self._decide()
                finally:
                    self._stop_timer()
                    for task in tasks:
                        task.cancel()  # the group waits for them
        except BaseExceptionGroup as group:
            raise _single(group) from None

    async def on_trio(self) -> None:
        import trio

        token = trio.lowlevel.current_trio_token()
        thread = threading.get_ident()

        def in_loop(callback: Callable[[], None]) -> None:
            if threading.get_ident() == thread:
                callback()
            else:
                token.run_sync_soon(callback)

        self.trio = True
        self._in_loop = in_loop
        self._new_event = trio.Event
        try:
            async with trio.open_nursery() as nursery:
                self._spawn = nursery.start_soon
                try:
                    await self._decide()
                finally:
                    self._stop_timer()
                    nursery.cancel_scope.cancel()  # the nursery waits for the attempts
        except BaseExceptionGroup as group:
            # trio wraps every exception out of a nursery, even the caller's
            # cancellation: `except trio.Cancelled` around the call must see it.
            raise _single(group) from None

    # -- the decision --------------------------------------------------------------------

    async def _decide(self) -> None:
        hedge = self.hedge
        self._wake = self._new_event()
        self._send()
        if hedge.max_hedged_attempts:
            self._start_timer()
        while not self.done:
            # Sending starts a task, which runs only at the next await: nothing
            # can decide the call inside this loop.
            while self.failed_now or self.timer_fired:
                reason = "failure" if self.failed_now else "delay"
                self.failed_now = self.timer_fired = False
                if reason == "delay" and self.in_flight == 0:
                    # The delay ran out as the last attempt was refused (a
                    # stalled process sees both at once): no attempt is left
                    # to hedge, and the hedge would be refused too.
                    break
                if not self.stopped and len(self.attempts) <= hedge.max_hedged_attempts:
                    if self._may_hedge():
                        self._send(reason)
                        self._start_timer()
                    else:
                        self.stopped = True
            if self.in_flight == 0:
                self.done = True  # every attempt failed, and no other may be sent
                break
            if self._wake_at is None:
                await self._wake.wait()
            else:  # trio on real time: the timer is this wait's deadline
                import trio

                with trio.move_on_at(self._wake_at) as waited:
                    await self._wake.wait()
                if waited.cancelled_caught:
                    self._wake_at = None
                    self.timer_fired = True
            self._wake = self._new_event()

    def _may_hedge(self) -> bool:
        """Whether a hedge may be sent now: time left before the deadline, then the budget."""
        hedge = self.hedge
        now = hedge._monotonic()
        deadline = current_deadline()
        if deadline is not None and deadline.remaining() <= hedge.expected_duration():
            next(hedge._too_late)
            return False
        if not hedge.budget.try_withdraw():
            next(hedge._refused)
            if hedge.events.active:
                hedge.events.publish(HedgeBudgetExhausted(name=hedge.name, time=now))
            return False
        return True

    def _send(self, reason: str | None = None) -> None:
        hedge = self.hedge
        now = hedge._monotonic()
        attempt = _Attempt(len(self.attempts) + 1, now)
        self.attempts.append(attempt)
        self.in_flight += 1
        if reason is not None:
            next(hedge._sent)
            if hedge.events.active:
                hedge.events.publish(
                    HedgeSent(
                        name=hedge.name,
                        time=now,
                        attempt=attempt.number,
                        elapsed=now - self.started,
                        reason=reason,
                    )
                )

        async def run() -> None:
            await self._run(attempt)

        self._spawn(run)

    async def _run(self, attempt: _Attempt) -> None:
        pending: Any = _NOTHING
        try:
            pending = self.fn(*self.args, **self.kwargs)
            attempt.result = await pending
            attempt.has_result = True
            predicate = self.hedge.non_fatal_result
            if predicate is not None:
                try:
                    attempt.failing = bool(predicate(attempt.result))
                except Exception as exc:  # noqa: BLE001  (raised to the caller, below)
                    attempt.error, attempt.judged = exc, True
        except Exception as exc:  # noqa: BLE001  (an attempt's outcome, judged below)
            if isinstance(exc, TypeError) and not_awaitable(self.hedge, self.fn, pending):
                exc = _returned_plain(self.fn, pending)
            attempt.error = exc
        except BaseException as exc:
            if self._cancelled(exc):
                raise  # a loser, or the caller cancelled: the task group's business
            # KeyboardInterrupt, SystemExit, or a CancelledError this task was
            # not sent (an awaited future someone else cancelled): fatal, and
            # raised to the caller as such, never a task group's exception group.
            attempt.error = exc
        finally:
            attempt.ended = self.hedge._monotonic()
            self.in_flight -= 1
        self._judge(attempt)

    def _cancelled(self, exc: BaseException) -> bool:
        """Whether `exc` is this attempt's task being cancelled (not a stray CancelledError)."""
        if self.trio:
            import trio

            return isinstance(exc, trio.Cancelled)
        asyncio = sys.modules["asyncio"]
        if not isinstance(exc, asyncio.CancelledError):
            return False
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0

    def _judge(self, attempt: _Attempt) -> None:
        """An attempt ended (not cancelled): does it decide the call?"""
        if self.done:
            return  # decided already: its result is discarded
        error = attempt.error
        if error is None:
            if attempt.failing:
                self.failed_now = True
            else:
                self.winner = attempt
                self.done = True
        else:
            # A BaseException, a misuse, or a predicate's own error: always fatal.
            may_go_on = (
                not attempt.judged
                and isinstance(error, Exception)
                and not isinstance(error, MisuseError)
            )
            if may_go_on and is_rejection(error):
                # Refused before it ran (an open breaker, a full bulkhead or limit):
                # the other attempts go on, but no hedge goes out at once, as it
                # would be refused too and spend the budget the retries share.
                pass
            elif may_go_on and self._non_fatal(attempt):
                self.failed_now = True
            else:
                self.fatal = attempt
                self.done = True
        self._wake.set()

    def _non_fatal(self, attempt: _Attempt) -> bool:
        """Whether the attempt's error lets the call go on (not if a predicate raised)."""
        error = attempt.error
        if error is None:
            return True
        try:
            return self.hedge.non_fatal.matches(error)
        except Exception as exc:  # noqa: BLE001  (the predicate's error is the call's)
            attempt.error = exc
            return False

    def _start_timer(self) -> None:
        """Set `timer_fired` after the delay: the loop's timer, the clock's alarms, or a task."""
        self._stop_timer()
        self.timer_round += 1
        this_round = self.timer_round
        delay = self.delay
        if delay <= 0:
            self.timer_fired = True  # no delay: the next attempt goes out now (Polly's 0)
            return

        def fire() -> None:
            if this_round == self.timer_round and not self.done:
                self.timer_fired = True
                self._wake.set()

        hedge = self.hedge
        if self._real_time:
            if self._call_later is not None:
                self._timer = self._call_later(delay, fire)
            else:
                import trio

                self._wake_at = trio.current_time() + delay
        elif hedge._call_at is not None:
            at = hedge._monotonic() + delay
            self._timer = hedge._call_at(at, lambda: self._in_loop(fire))
        else:  # a clock of your own, without alarms: sleep on it

            async def timer() -> None:
                await hedge.clock.asleep(delay)
                fire()

            self._spawn(timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_at = None

    # -- the end -------------------------------------------------------------------

    def outcome(self) -> Any:
        """The winner's result, the fatal error, or the first attempt's outcome."""
        hedge = self.hedge
        if self.winner is not None:
            if self.winner.number > 1:
                next(hedge._won)
                if hedge.events.active:
                    now = hedge._monotonic()
                    hedge.events.publish(
                        HedgeWon(
                            name=hedge.name,
                            time=now,
                            attempt=self.winner.number,
                            elapsed=now - self.started,
                        )
                    )
            return self.winner.result
        chosen = self.fatal if self.fatal is not None else self.attempts[0]
        if chosen.error is not None:
            raise chosen.error
        return chosen.result  # a failing result: every attempt failed

    def _returned(self) -> _Attempt | None:
        if self.abandoned:
            return None
        if self.winner is not None:
            return self.winner
        first = self.attempts[0] if self.attempts else None
        if self.fatal is None and first is not None and first.error is None and first.has_result:
            return self.attempts[0]
        return None

    async def discard(self) -> None:
        """Hand every result that will not be returned to `discard_result`, then the transport's.

        The transport's hook (which closes a response) is the one its retries
        use too, and runs even when `discard_result` raised.
        """
        hooks = [h for h in (self.hedge.discard_result, _discard_for_this_call.get()) if h]
        if not hooks:
            return
        returned = self._returned()
        unused = [a.result for a in self.attempts if a.has_result and a is not returned]
        if not unused:
            return
        if self.trio:
            import trio

            with trio.CancelScope(shield=True):  # even when the caller was cancelled
                for hook in hooks:
                    await _discard_all(hook, unused)
        else:
            for hook in hooks:
                await _discard_all(hook, unused)

    def sample(self) -> None:
        """Record the attempts' latencies (see the class docstring of `Hedge`)."""
        hedge = self.hedge
        latencies = hedge._latencies
        for attempt in self.attempts:
            if attempt.ended is None:
                continue
            took = max(attempt.ended - attempt.started, 0.0)  # a clock that went back
            if attempt.has_result:
                if attempt.error is None and not attempt.failing:
                    latencies.add(took)
            elif attempt.error is None and took > self.delay:
                latencies.add(took)  # cancelled after the delay: at least this slow
