"""ConcurrencyLimit: a bulkhead whose limit adapts to the downstream's latency and drops."""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar, cast

from ._admission import Admission, _wake
from ._compose import _NOTHING, refuse_generators
from ._counter import peek
from ._deadline import current_deadline
from ._limit_algorithms import AIMDLimit, LimitAlgorithm, _clamp
from ._outcome import ExceptionFilter, ExceptionSpec, ResultPredicate, is_rejection
from ._tracking import track
from .errors import ConcurrencyLimitExceededError
from .events import LimitChanged, LimitRejected

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from ._admission import _Waiter
    from ._clock import Clock
    from .errors import BulkheadFullError

__all__ = ["ConcurrencyLimit", "LimitPermit", "is_overload", "is_timeout"]

P = ParamSpec("P")
R = TypeVar("R")

_SUCCESS, _DROP, _IGNORED = 0, 1, 2
#: Statuses that say "too much load": HTTP 429 Too Many Requests, 503 Service Unavailable.
_OVERLOAD_STATUSES = frozenset({429, 503})
#: gRPC codes that say the same (A6/Netflix: UNAVAILABLE; quota: RESOURCE_EXHAUSTED).
_OVERLOAD_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})
#: How many samples an aggregated window needs before the algorithm sees it
#: (concurrency-limits `WindowedLimit`'s default window size).
_WINDOW_SAMPLES = 10
_INF = float("inf")
#: Types whose values carry no status: never an overload answer, never awaitable.
_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set})


def is_overload(outcome: object) -> bool:
    """Whether a returned value or an exception is an overload answer from the downstream.

    That is an HTTP 429 or 503: an int `status_code` on the value itself
    (an httpx or requests response, duck-typed) or on its `.response` (an
    `httpx.HTTPStatusError`); or a gRPC error (`grpc.RpcError`, if grpc was
    imported) with code RESOURCE_EXHAUSTED or UNAVAILABLE. Never raises.
    """
    if type(outcome) in _SCALARS:
        return False
    try:
        for candidate in (outcome, getattr(outcome, "response", None)):
            status = getattr(candidate, "status_code", None)
            if type(status) is int or (isinstance(status, int) and not isinstance(status, bool)):
                return status in _OVERLOAD_STATUSES
        return _grpc_code(outcome) in _OVERLOAD_CODES
    except Exception:  # noqa: BLE001  (a property that fails: not an overload, never a broken call)
        return False


def is_timeout(exc: BaseException) -> bool:
    """Whether `exc` says the call took too long.

    A `TimeoutError` (so `resilience.DeadlineExceededError` too, unless its
    deadline was spent before the call started: that is a rejection), an
    `httpx.TimeoutException` (if httpx was imported; it is never imported
    for this), or a gRPC error with code DEADLINE_EXCEEDED.
    """
    if isinstance(exc, TimeoutError):
        return True
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TimeoutException):
        return True
    try:
        return _grpc_code(exc) == "DEADLINE_EXCEEDED"
    except Exception:  # noqa: BLE001
        return False


def _grpc_code(outcome: object) -> str | None:
    grpc = sys.modules.get("grpc")
    if grpc is None or not isinstance(outcome, grpc.RpcError):
        return None
    code = getattr(outcome, "code", None)
    return getattr(code(), "name", None) if callable(code) else None


def _cancelled(exc: BaseException) -> bool:
    """Whether `exc` is asyncio's or trio's cancellation (not KeyboardInterrupt and the like)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


def _deadline_cut() -> bool:
    """Whether the deadline in force here has run out: the call ended because time did."""
    deadline = current_deadline()
    return deadline is not None and deadline.expired


class LimitPermit:
    """Admission of one call through a `ConcurrencyLimit`; settle it exactly once.

    `record_success()` (a latency sample), `record_drop()` (the downstream
    was overloaded or too slow), `release()` (the call says nothing: no
    sample), or let the limit classify an end: `record_result(value)`,
    `record_exception(exc)`. Settling twice raises `RuntimeError`.
    Decorators and `with` blocks settle their permits themselves; inside
    `with limit as permit:` a permit settled by hand is not settled again.
    """

    __slots__ = ("_policy", "in_flight", "settled", "start")

    def __init__(self, policy: ConcurrencyLimit, start: float, in_flight: int) -> None:
        self._policy = policy
        #: The clock reading at admission.
        self.start = start
        #: Calls in flight just after this one was admitted (itself included).
        self.in_flight = in_flight
        #: Whether the permit was settled.
        self.settled = False

    def record_success(self) -> None:
        """Settle as a latency sample (the call ended, not overloaded)."""
        self._policy._settle(self, _SUCCESS)

    def record_drop(self) -> None:
        """Settle as a drop: a timeout, an overload answer, a deadline cut."""
        self._policy._settle(self, _DROP)

    def release(self) -> None:
        """Settle without a sample: the call says nothing about the downstream's load."""
        self._policy._settle(self, _IGNORED)

    def record_result(self, result: object) -> None:
        """Settle a call that returned `result`: a drop if `drop_if(result)`, else a sample."""
        self._check_unsettled()
        self._policy._on_return(self, result)

    def record_exception(self, exc: BaseException) -> None:
        """Settle a call that raised `exc`: a drop, or no sample (see `ConcurrencyLimit`)."""
        self._check_unsettled()
        self._policy._on_error(self, exc)

    def _check_unsettled(self) -> None:
        if self.settled:
            raise RuntimeError(f"{self!r} was already settled; settle a permit exactly once")

    def __repr__(self) -> str:
        return (
            f"<LimitPermit limit={self._policy.name!r} in_flight={self.in_flight} "
            f"settled={self.settled}>"
        )


class ConcurrencyLimit(Admission[LimitPermit]):
    """A bulkhead whose limit adapts: at most `limit` calls at once, `limit` moved by an algorithm.

    ```python
    payments = resilience.ConcurrencyLimit(resilience.AIMDLimit(timeout=0.25), name="payments")

    @payments
    async def charge(order: Order) -> Receipt: ...
    ```

    Admission is `Bulkhead`'s (the same machinery): a call over the limit is
    rejected at once with `ConcurrencyLimitExceededError` (a
    `BulkheadFullError`), or waits in a FIFO queue for up to `max_wait`
    seconds; sync, async (asyncio, trio), decorators, `with`/`async with`,
    `compose`, and the two-step `acquire()` / permit. When the limit rises,
    waiters are granted at once; when it falls, calls in flight finish and
    nobody is admitted until fewer than `limit` are in flight.

    Every admitted call ends as one of:

    - a sample: it returned (or its `with` block ended) and is not a drop;
      its latency, measured on `clock` from admission, feeds the algorithm;
    - a drop: a returned value for which `drop_if(value)` is true (default:
      an HTTP 429/503 response, `is_overload`); an exception matching
      `drop_on` (default: a timeout, `is_timeout`, or an exception carrying
      an overload answer); or any exception or cancellation raised after the
      deadline in force (`resilience.deadline`, `Timeout`) ran out;
    - nothing (no sample): cancellation, KeyboardInterrupt and the like, the
      library's own rejections (an inner breaker, bulkhead or limit, a spent
      retry budget, a deadline spent before the call), `MisuseError`, and
      every other exception (it says nothing about load: Netflix's gRPC
      client limiter ignores every error but UNAVAILABLE too).

    The algorithm sees one aggregate per sampling window (concurrency-limits
    `WindowedLimit`): the mean latency, the most calls in flight, and
    whether any call dropped. A window lasts at least the algorithm's
    `window` (0.1 s by default) and twice the previous window's shortest
    latency, and holds at least 10 samples. With `window=None` the algorithm
    sees every sample.

    Args:
        algorithm: The `resilience.LimitAlgorithm` that moves the limit
            (default `AIMDLimit()`); one algorithm object per limit.
        max_wait: Seconds a call may wait for a slot (>= 0; default 0: reject at once).
        max_queue: Callers allowed to wait at once (default: no limit beyond `max_wait`).
        drop_if: A predicate on a returned value that makes it a drop, or None.
        drop_on: Exceptions (types or predicates) that are drops; `()` for none.
        name: Names the limit in errors, events and metrics.
        clock: A `resilience.Clock` that measures latencies and waits.
    """

    __slots__ = (
        "_drop_if",
        "_drop_on",
        "_dropped",
        "_estimate",
        "_ignored",
        "_monotonic",
        "_succeeded",
        "_w_count",
        "_w_drop",
        "_w_end",
        "_w_in_flight",
        "_w_min",
        "_w_sum",
        "algorithm",
        "window",
    )

    _noun = "limit"
    #: The default `drop_on`: a timeout, or an exception carrying an overload answer.
    DEFAULT_DROP_ON: ClassVar[tuple[Callable[[BaseException], bool], ...]] = (
        is_timeout,
        is_overload,
    )

    def __init__(
        self,
        algorithm: LimitAlgorithm | None = None,
        *,
        max_wait: float = 0.0,
        max_queue: int | None = None,
        drop_if: ResultPredicate | None = is_overload,
        drop_on: ExceptionSpec = DEFAULT_DROP_ON,
        name: str = "limit",
        clock: Clock | None = None,
    ) -> None:
        if algorithm is None:
            algorithm = AIMDLimit()
        elif not isinstance(algorithm, LimitAlgorithm):
            raise TypeError(
                f"algorithm= must be a resilience.LimitAlgorithm (AIMDLimit, Gradient2Limit, "
                f"VegasLimit), got {algorithm!r}"
            )
        if algorithm._owner is not None:
            raise ValueError(
                f"algorithm= {algorithm!r} already drives another ConcurrencyLimit: it keeps "
                f"what it learnt from that limit's calls; make one algorithm object per limit"
            )
        if drop_if is not None and not callable(drop_if):
            raise TypeError(f"drop_if= must be a callable(result) -> bool or None, got {drop_if!r}")
        self._drop_on = ExceptionFilter(drop_on, param="drop_on")
        self._init_admission(
            algorithm.initial_limit, max_wait=max_wait, max_queue=max_queue, name=name, clock=clock
        )
        algorithm._owner = self
        self._monotonic = self.clock.monotonic
        #: The algorithm that moves the limit.
        self.algorithm = algorithm
        #: The shortest sampling window in seconds, or None: the algorithm sees every sample.
        self.window = algorithm.window
        self._drop_if = drop_if
        self._estimate = float(algorithm.initial_limit)
        self._rejected: itertools.count[int] = itertools.count()
        self._succeeded = 0
        self._dropped = 0
        self._ignored = 0
        self._w_end = self.clock.monotonic() + (self.window or 0.0)
        self._w_min = _INF
        self._w_sum = 0.0
        self._w_count = 0
        self._w_in_flight = 0
        self._w_drop = False
        track("limit", self)

    # -- admission ----------------------------------------------------------------

    def acquire(self) -> LimitPermit:
        """Admit one call and return its permit, or raise `ConcurrencyLimitExceededError`.

        Waits (blocking the thread) up to `max_wait` for a slot, like `with
        limit:`; inside a running event loop use `aacquire()`.
        """
        self._admit()
        return LimitPermit(self, self._monotonic(), self._in_flight)

    async def aacquire(self) -> LimitPermit:
        """`acquire()` for async code: a wait for a slot never blocks the event loop."""
        await self._aadmit()
        return LimitPermit(self, self._monotonic(), self._in_flight)

    _enter = acquire
    _aenter = aacquire

    def _refuse(self, waited: float) -> BulkheadFullError:
        next(self._rejected)
        return ConcurrencyLimitExceededError(self.name, self._limit, waited)

    def _announce(self, error: BulkheadFullError) -> BulkheadFullError:
        if self.events.active:
            self.events.publish(
                LimitRejected(
                    name=self.name,
                    time=self.clock.monotonic(),
                    limit=error.max_concurrent,
                    waited=error.waited,
                )
            )
        return error

    # -- settling -------------------------------------------------------------------

    def _on_return(self, token: LimitPermit, result: object) -> None:
        if token.settled:  # `with limit as permit:` settled it by hand
            return
        drop_if = self._drop_if
        if drop_if is None:
            self._settle(token, _SUCCESS)
            return
        try:
            dropped = drop_if(result)
        except BaseException:
            self._settle(token, _IGNORED)  # a predicate bug must not leak the slot
            raise
        self._settle(token, _DROP if dropped else _SUCCESS)

    def _on_exit(self, token: LimitPermit) -> None:
        if not token.settled:
            self._settle(token, _SUCCESS)

    def _on_misuse(self, token: LimitPermit) -> None:
        if not token.settled:
            self._settle(token, _IGNORED)

    def _on_error(self, token: LimitPermit, exc: BaseException) -> None:
        if token.settled:
            return
        try:
            kind = self._classify(exc)
        except BaseException:
            self._settle(token, _IGNORED)
            raise
        self._settle(token, kind)

    def _classify(self, exc: BaseException) -> int:
        if isinstance(exc, Exception):
            if is_rejection(exc):
                return _IGNORED  # nothing reached the downstream
            if self._drop_on.matches(exc):
                return _DROP
        elif not _cancelled(exc):
            return _IGNORED  # KeyboardInterrupt, SystemExit, GeneratorExit
        return _DROP if _deadline_cut() else _IGNORED

    def _settle(self, permit: LimitPermit, kind: int) -> None:
        if permit.settled:
            raise RuntimeError(f"{permit!r} was already settled; settle a permit exactly once")
        permit.settled = True
        self._finish(permit.start, permit.in_flight, kind)

    def _finish(self, start: float, in_flight: int, kind: int) -> None:
        """Count the call, feed its sample to the algorithm, free its slot."""
        now = self._monotonic() if kind != _IGNORED else 0.0
        rtt = now - start
        moved: tuple[int, int, int] | None = None
        granted: list[_Waiter] | None = None
        try:
            with self._lock:
                try:
                    if kind == _SUCCESS:
                        self._succeeded += 1
                        if rtt > 0:  # else the clock did not move: nothing was measured
                            if self.window is None:
                                moved = self._update(rtt, in_flight, False)
                            else:  # the common case, inlined: add to the window
                                self._w_sum += rtt
                                self._w_count += 1
                                if in_flight > self._w_in_flight:
                                    self._w_in_flight = in_flight
                                if rtt < self._w_min:
                                    self._w_min = rtt
                                if now >= self._w_end and self._w_count >= _WINDOW_SAMPLES:
                                    moved = self._close_window(now)
                    elif kind == _DROP:
                        self._dropped += 1
                        if self.window is None:
                            moved = self._update(rtt, in_flight, True)
                        else:
                            self._w_sum += max(rtt, 0.0)
                            self._w_count += 1
                            if in_flight > self._w_in_flight:
                                self._w_in_flight = in_flight
                            self._w_drop = True
                            if now >= self._w_end and self._w_count >= _WINDOW_SAMPLES:
                                moved = self._close_window(now)
                    else:
                        self._ignored += 1
                finally:
                    self._in_flight -= 1
                    if self._waiters:
                        granted = self._grant()
        finally:
            # Outside the lock, and even when the algorithm raised: a waiter
            # granted the slot must not sleep out its max_wait.
            if granted:
                for waiter in granted:
                    _wake(waiter)
        if moved is not None and self.events.active:
            self.events.publish(
                LimitChanged(
                    name=self.name,
                    time=now,
                    from_limit=moved[0],
                    to_limit=moved[1],
                    in_flight=moved[2],
                )
            )

    def _close_window(self, now: float) -> tuple[int, int, int] | None:
        """Feed the window's aggregate to the algorithm and start the next window (under the lock).

        As concurrency-limits `WindowedLimit`: the mean RTT, the most calls
        in flight, whether any call dropped. The next window lasts at least
        `window` and at least twice this one's shortest RTT (of calls that
        did not drop).
        """
        window = cast(float, self.window)
        rtt = self._w_sum / self._w_count
        in_flight, dropped, shortest = self._w_in_flight, self._w_drop, self._w_min
        self._w_end = now + (window if shortest == _INF else max(window, 2 * shortest))
        self._w_sum, self._w_count, self._w_in_flight = 0.0, 0, 0
        self._w_drop, self._w_min = False, _INF
        return self._update(rtt, in_flight, dropped)

    def _update(self, rtt: float, in_flight: int, dropped: bool) -> tuple[int, int, int] | None:
        """One algorithm step (under the lock); return (from, to, in_flight) if the limit moved."""
        algorithm = self.algorithm
        estimate = algorithm.update(self._estimate, rtt, in_flight, dropped)
        if estimate != estimate:  # NaN from a custom algorithm: keep the limit
            return None
        estimate = _clamp(estimate, algorithm.min_limit, algorithm.max_limit)
        self._estimate = estimate
        old, new = self._limit, int(estimate)
        if new == old:
            return None
        self._limit = new
        return old, new, self._in_flight - 1

    # -- decorators: admission and settling inlined, no permit object -------------

    def _returned_slow(self, start: float, in_flight: int, fn: object, result: object) -> None:
        """Settle a decorated sync call whose result needs a look: an awaitable, `drop_if`."""
        self._returned(LimitPermit(self, start, in_flight), fn, result)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        refuse_generators(fn, self)
        policy, lock, waiters, monotonic = self, self._lock, self._waiters, self._monotonic
        acquire, on_error, finish = self.acquire, self._on_error, self._finish
        returned_slow, returned = self._returned_slow, self._returned
        plain = _SCALARS
        # Plain results (None, numbers, strings...) are never drops by default.
        plain_ok = self._drop_if is None or self._drop_if is is_overload

        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with lock:
                if policy._in_flight < policy._limit and not waiters:
                    policy._in_flight += 1
                    in_flight = policy._in_flight
                else:
                    in_flight = 0
            if not in_flight:  # full: wait for a slot or be rejected, with a permit
                permit = acquire()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    on_error(permit, exc)
                    raise
                returned(permit, fn, result)
                return result
            start = monotonic()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                on_error(LimitPermit(policy, start, in_flight), exc)
                raise
            if plain_ok and type(result) in plain:
                finish(start, in_flight, _SUCCESS)
            else:
                returned_slow(start, in_flight, fn, result)
            return result

        return wrapper

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        policy, lock, waiters, monotonic = self, self._lock, self._waiters, self._monotonic
        aacquire, failed, finish = self.aacquire, self._failed, self._finish
        on_return = self._on_return
        plain = _SCALARS
        plain_ok = self._drop_if is None or self._drop_if is is_overload
        nothing = _NOTHING

        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with lock:
                if policy._in_flight < policy._limit and not waiters:
                    policy._in_flight += 1
                    in_flight = policy._in_flight
                else:
                    in_flight = 0
            if not in_flight:
                permit = await aacquire()
                start, in_flight = permit.start, permit.in_flight
            else:
                start = monotonic()
                permit = None
            pending: Any = nothing
            try:
                pending = fn(*args, **kwargs)
                result: R = await pending
            except BaseException as exc:
                failed(permit or LimitPermit(policy, start, in_flight), exc, fn, pending)
                raise
            if permit is None and plain_ok and type(result) in plain:
                finish(start, in_flight, _SUCCESS)
            else:
                on_return(permit or LimitPermit(policy, start, in_flight), result)
            return result

        return wrapper

    # -- reading ------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Calls admitted at once now."""
        return self._limit

    def metrics(self) -> dict[str, int]:
        """The limit, calls in flight and queued, and counts of calls by how they ended."""
        with self._lock:
            return {
                "limit": self._limit,
                "in_flight": self._in_flight,
                "waiting": len(self._waiters),
                "rejected": peek(self._rejected),
                "succeeded": self._succeeded,
                "dropped": self._dropped,
                "ignored": self._ignored,
            }

    def __repr__(self) -> str:
        return (
            f"<ConcurrencyLimit {self.name!r} {self._in_flight}/{self._limit} in flight, "
            f"{len(self._waiters)} waiting, {type(self.algorithm).__name__}>"
        )
