"""Resilient gRPC (grpcio) calls: client interceptors and deadline server interceptors.

```python
import grpc
import resilience.grpc

channel = grpc.intercept_channel(
    grpc.insecure_channel("payments:50051", options=resilience.grpc.channel_options()),
    resilience.grpc.ResilientClientInterceptor(target="payments:50051"),
)
```

Every call goes through: total deadline -> retry (with a budget) -> circuit
breaker (per target, or per method) -> concurrency limit -> attempt, with
gRPC's status rules (gRPC proposal A6): retry UNAVAILABLE only (and
RESOURCE_EXHAUSTED only when the server pushed back), honour
`grpc-retry-pushback-ms`, count UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN as breaker failures and the other
codes (INVALID_ARGUMENT, NOT_FOUND...) as successes. The call's timeout is
clamped to the remaining `resilience.deadline` (never extended); on the
server side, `DeadlineServerInterceptor` turns the incoming gRPC deadline
into a `resilience.deadline` around the handler. Needs `resilience[grpc]`.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import copy
import functools
import inspect
import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast, overload

try:
    import grpc
    import grpc.aio
except ModuleNotFoundError as missing:  # pragma: no cover  (grpcio is in the test dependencies)
    raise ModuleNotFoundError(
        "resilience.grpc needs grpcio: pip install 'resilience[grpc]'", name=missing.name
    ) from missing

from ._backoff import Backoff
from ._budget import RetryBudget
from ._clock import SYSTEM_CLOCK, Clock, resolve_clock
from ._deadline import DEADLINE_SLACK, Deadline, current_deadline, enter_deadline, leave_deadline
from ._hedge import Hedge
from ._limit import ConcurrencyLimit, LimitPermit
from ._limit_algorithms import AIMDLimit
from ._outcome import ExceptionFilter
from ._refusals import Refusal, refusal_of
from ._retry import Retry
from ._validate import (
    check_attempt_within_total,
    check_bool,
    check_incoming_budget,
    check_seconds,
    check_string,
)
from .breaker import BreakerRegistry, CircuitBreaker, Permit, TimeWindow
from .errors import (
    CircuitOpenError,
    ConcurrencyLimitExceededError,
    DeadlineExceededError,
    MisuseError,
    ResilienceError,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Iterator,
        Sequence,
    )
    from contextvars import Token

    from ._state import State

__all__ = [
    "FAILURE_CODES",
    "PREVIOUS_ATTEMPTS_KEY",
    "PUSHBACK_KEY",
    "RETRY_CODES",
    "AsyncDeadlineServerInterceptor",
    "AsyncResilientClientInterceptor",
    "DeadlineServerInterceptor",
    "GrpcCircuitOpenError",
    "GrpcConcurrencyLimitExceededError",
    "GrpcDeadlineExceededError",
    "ResilientClientInterceptor",
    "channel_options",
    "pushback_of",
]

_Code = grpc.StatusCode

#: Codes retried by default: the request was not processed (gRPC A6's example policy).
RETRY_CODES: frozenset[grpc.StatusCode] = frozenset({_Code.UNAVAILABLE})
#: Codes a breaker counts as failures by default; every other code is a success,
#: except CANCELLED, which says nothing about the server (IGNORED).
FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        _Code.UNAVAILABLE,
        _Code.DEADLINE_EXCEEDED,
        _Code.RESOURCE_EXHAUSTED,
        _Code.INTERNAL,
        _Code.UNKNOWN,
    }
)
#: Codes that tell a concurrency limit the server is overloaded (a drop, DESIGN 15).
_DROP_CODES = frozenset({_Code.RESOURCE_EXHAUSTED, _Code.UNAVAILABLE, _Code.DEADLINE_EXCEEDED})
#: The trailing metadata key of server pushback (gRPC A6): milliseconds to wait
#: before the next attempt; negative or malformed means "do not retry".
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: The metadata key sent on a retried attempt: how many attempts came before (gRPC A6).
PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"
#: The channel option that turns grpcio's own retries on or off (gRPC A6).
_ENABLE_RETRIES = "grpc.enable_retries"
#: The channel options of grpcio's reconnect backoff (gRPC connection backoff).
_MAX_RECONNECT = "grpc.max_reconnect_backoff_ms"
_INITIAL_RECONNECT = "grpc.initial_reconnect_backoff_ms"
#: gRPC's default first reconnect backoff, and the largest option value (an int32).
_GRPC_INITIAL_BACKOFF_MS = 1000
_MAX_BACKOFF_MS = 2**31 - 1
#: `channel_options()`'s bound on the reconnect backoff: with its +-20% jitter,
#: below the default breaker's 5 s open duration.
_DEFAULT_RECONNECT_BACKOFF = 4.0
#: More seconds left than this is grpcio's "no deadline" (its infinite future).
_NO_DEADLINE = 1e9
#: The most targets x methods with a breaker of their own in the default registry.
_MAX_BREAKERS = 1000
#: A marker: a stream ended before its first message.
_END: Any = object()


def channel_options(
    options: Sequence[tuple[str, Any]] = (),
    *,
    max_reconnect_backoff: float | None = _DEFAULT_RECONNECT_BACKOFF,
) -> list[tuple[str, Any]]:
    """`options` with grpcio's own retries off and its reconnect backoff bounded.

    Build the channel that a `ResilientClientInterceptor` retries on with
    these options, so that a service config's retry policy does not multiply
    the attempts (gRPC A6, "disabling retries"): `grpc.insecure_channel(
    target, options=resilience.grpc.channel_options())`. A
    `grpc.enable_retries` already in `options` is replaced.

    `max_reconnect_backoff` (seconds, default 4) bounds grpcio's wait between
    reconnections (gRPC's connection backoff: 1 s growing 1.6x, +-20% jitter,
    up to 120 s): while it waits, every call fails at once with UNAVAILABLE,
    a breaker's half-open probe too. Below the default breaker's 5 s
    open duration (with the jitter), the channel tries again within each open
    period. `grpc.initial_reconnect_backoff_ms` is lowered to it if larger.
    None leaves grpcio's backoff; options of yours with those names are kept.
    `grpc.min_reconnect_backoff_ms` is left alone: it is gRPC's minimum
    connect timeout (20 s), which a slow network needs.
    """
    if max_reconnect_backoff is not None:
        max_reconnect_backoff = check_seconds(max_reconnect_backoff, "max_reconnect_backoff")
        if not 0.001 <= max_reconnect_backoff <= _MAX_BACKOFF_MS / 1000:
            raise ValueError(
                f"max_reconnect_backoff= must be from 0.001 to {_MAX_BACKOFF_MS // 1000} "
                f"seconds (grpcio takes whole milliseconds), got {max_reconnect_backoff!r}"
            )
    given: object = options  # checked as what a caller may really pass
    if isinstance(given, (str, bytes)) or not isinstance(given, collections.abc.Iterable):
        raise TypeError(f"options= takes a sequence of (name, value) pairs, got {options!r}")
    kept: list[tuple[str, Any]] = []
    for option in given:
        if not (isinstance(option, tuple) and len(option) == 2 and isinstance(option[0], str)):
            raise TypeError(f"options= takes (name, value) pairs, got {option!r}")
        if option[0] != _ENABLE_RETRIES:
            kept.append(option)
    kept.append((_ENABLE_RETRIES, 0))
    names = {name for name, _ in kept}
    if max_reconnect_backoff is not None:
        most = round(max_reconnect_backoff * 1000)
        if _MAX_RECONNECT not in names:
            kept.append((_MAX_RECONNECT, most))
        if _INITIAL_RECONNECT not in names and most < _GRPC_INITIAL_BACKOFF_MS:
            kept.append((_INITIAL_RECONNECT, most))
    return kept


# -- errors ---------------------------------------------------------------------------


class _Status:
    """The `grpc.RpcError` (and `grpc.aio.AioRpcError`-like) side of resilience's errors."""

    _grpc_code: grpc.StatusCode

    def code(self) -> grpc.StatusCode:
        """The gRPC status this error stands for."""
        return self._grpc_code

    def details(self) -> str:
        """What happened, in words (the error's message)."""
        return str(self)

    def initial_metadata(self) -> Any:
        """None was received: nothing was sent."""
        return ()

    def trailing_metadata(self) -> Any:
        """None was received: nothing was sent (or the call was cut locally)."""
        return ()

    def debug_error_string(self) -> str:
        """The error's message (there is no transport-level debug string)."""
        return str(self)

    # A finished call and future too, as grpcio's own errors are: an interceptor
    # outside this one gets it back from its continuation as the call's outcome.

    def done(self) -> bool:
        """True: the call is over."""
        return True

    def running(self) -> bool:
        """False: the call is over."""
        return False

    def cancelled(self) -> bool:
        """False: the call was refused, not cancelled."""
        return False

    def cancel(self) -> bool:
        """False: nothing to cancel."""
        return False

    def is_active(self) -> bool:
        """False: the call is over."""
        return False

    def time_remaining(self) -> float | None:
        """None: the call is over."""
        return None

    def result(self, timeout: float | None = None) -> Any:
        """Raise this error, as a failed call's `result()` does."""
        raise cast("BaseException", self)

    def exception(self, timeout: float | None = None) -> BaseException:
        """This error."""
        return cast("BaseException", self)

    def traceback(self, timeout: float | None = None) -> Any:
        """This error's traceback."""
        return cast("BaseException", self).__traceback__

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """False: the call is over (the callback is not kept)."""
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call `fn(self)` now: the call is over."""
        fn(self)


class GrpcCircuitOpenError(_Status, CircuitOpenError, grpc.RpcError):
    """The breaker is open: a `CircuitOpenError` and a `grpc.RpcError` with code UNAVAILABLE.

    Nothing was sent. `name` is the breaker's name (the target, or the
    target and the method with `breaker_scope="method"`).
    """

    _grpc_code = _Code.UNAVAILABLE

    def __init__(self, name: str, state: State, retry_after: float | None) -> None:
        Exception.__init__(self, name, state, retry_after)


class GrpcConcurrencyLimitExceededError(_Status, ConcurrencyLimitExceededError, grpc.RpcError):
    """The target's concurrency limit is reached: also a `grpc.RpcError` (RESOURCE_EXHAUSTED).

    Nothing was sent; breakers ignore it and the retry does not retry it.
    """

    _grpc_code = _Code.RESOURCE_EXHAUSTED

    def __init__(self, name: str, limit: int, waited: float = 0.0) -> None:
        Exception.__init__(self, name, limit, waited)


class GrpcDeadlineExceededError(_Status, DeadlineExceededError, grpc.RpcError):
    """The `resilience` deadline ran out: also a `grpc.RpcError` with code DEADLINE_EXCEEDED.

    `before_call=True`: nothing was sent (no time was left). Otherwise the
    call ended with DEADLINE_EXCEEDED because its timeout, clamped to the
    deadline, ran out; that error is the `__cause__`.
    """

    _grpc_code = _Code.DEADLINE_EXCEEDED


#: resilience's own gRPC errors: the call was refused (or cut) on this side.
_REFUSALS = (GrpcCircuitOpenError, GrpcConcurrencyLimitExceededError, GrpcDeadlineExceededError)


class _AioStatus(grpc.aio.AioRpcError):
    """The `grpc.aio` face of resilience's gRPC errors: also a `grpc.aio.AioRpcError`.

    grpc.aio's call objects answer `code()`, `details()` and the metadata
    from an `AioRpcError` their interceptor raised; any other exception
    they raise again from each of those. The answers are resilience's
    (`_Status` comes first in the MRO); grpc.aio's attributes are not used.
    """

    def __repr__(self) -> str:
        return Exception.__repr__(self)


class _AioGrpcCircuitOpenError(GrpcCircuitOpenError, _AioStatus):
    """`GrpcCircuitOpenError` raised in grpc.aio."""


class _AioGrpcConcurrencyLimitExceededError(GrpcConcurrencyLimitExceededError, _AioStatus):
    """`GrpcConcurrencyLimitExceededError` raised in grpc.aio."""


class _AioGrpcDeadlineExceededError(GrpcDeadlineExceededError, _AioStatus):
    """`GrpcDeadlineExceededError` raised in grpc.aio."""


# -- status rules ---------------------------------------------------------------------


def _codes(value: object, param: str) -> frozenset[grpc.StatusCode]:
    if isinstance(value, (str, bytes, grpc.StatusCode)) or not isinstance(
        value, collections.abc.Iterable
    ):
        raise TypeError(
            f"{param}= takes a collection of grpc.StatusCode such as "
            f"{{grpc.StatusCode.UNAVAILABLE}}, got {value!r}"
        )
    codes = frozenset(value)
    for code in codes:
        if not isinstance(code, grpc.StatusCode):
            raise TypeError(f"{param}= takes grpc.StatusCode members, got {code!r}")
    if _Code.OK in codes:
        raise ValueError(f"{param}= cannot hold grpc.StatusCode.OK: a call that succeeded")
    return codes


def _code_of(error: BaseException) -> grpc.StatusCode | None:
    """The status code of a gRPC error (sync or aio), or None for any other exception."""
    if not isinstance(error, grpc.RpcError):
        return None
    try:
        return error.code()
    except Exception:  # noqa: BLE001  (a strange RpcError subclass: no code)
        return None


def pushback_of(error: BaseException) -> float | None:
    """Seconds of server pushback in a gRPC error's trailing metadata, if any.

    `grpc-retry-pushback-ms` (gRPC A6): a non-negative integer (ASCII
    digits) is the wait in milliseconds (one too large for a float is
    `math.inf`); a negative or malformed value means "do not retry" and is
    returned as -1.0. None when the error carries no pushback.
    """
    try:
        trailing = error.trailing_metadata()  # type: ignore[attr-defined]
        pairs = list(trailing or ())
    except Exception:  # noqa: BLE001  (no metadata to read: no pushback)
        return None
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] == PUSHBACK_KEY):
            continue
        value = pair[1]
        try:
            text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            return -1.0
        text = text.strip()
        if not (text.isascii() and text.isdigit()):
            return -1.0  # negative, a fraction, a sign, not a number: do not retry
        try:
            return int(text) / 1000
        except (OverflowError, ValueError):  # past float range, or past int()'s digit limit
            return math.inf  # above any max_retry_after: the retry gives up
    return None


class _Rules:
    """gRPC A6's status rules: what to retry, what a breaker counts as a failure."""

    __slots__ = ("failure_codes", "retry_codes")

    def __init__(self, retry_codes: object, failure_codes: object) -> None:
        self.retry_codes = _codes(retry_codes, "retry_codes")
        self.failure_codes = _codes(failure_codes, "failure_codes")

    def retryable(self, error: BaseException) -> bool:
        """Whether a gRPC error may be retried; a pushback wait is attached for the retry.

        A code in `retry_codes` is retried unless the server pushed back with
        a negative value; RESOURCE_EXHAUSTED also with a pushback >= 0 (when
        the server says when to come back), unless `retry_codes` is empty:
        then nothing is retried. The pushback is set as the error's
        `retry_after`, which `Retry` honours as the least wait.
        """
        code = _code_of(error)
        if code is None or not self.retry_codes:
            return False
        pushback = pushback_of(error)
        if pushback is not None and pushback < 0:
            return False
        if code not in self.retry_codes and not (
            code is _Code.RESOURCE_EXHAUSTED and pushback is not None
        ):
            return False
        if pushback is not None:
            with contextlib.suppress(AttributeError):  # a slotted RpcError: backoff only
                error.retry_after = pushback  # type: ignore[attr-defined]
        return True


# -- the configuration both client interceptors share ----------------------------------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    """`grpc.ClientCallDetails` for one attempt (grpcio has no public constructor)."""


def _method_name(method: str | bytes) -> str:
    return method.decode("utf-8", "replace") if isinstance(method, bytes) else method


class _Client:
    """Configuration and per-call decisions of both client interceptors."""

    def __init__(
        self,
        *,
        target: str,
        breaker: CircuitBreaker | BreakerRegistry | bool,
        breaker_scope: str,
        retry: Retry | bool,
        retry_codes: Collection[grpc.StatusCode],
        failure_codes: Collection[grpc.StatusCode],
        total_timeout: float | None,
        attempt_timeout: float | None,
        concurrency_limit: ConcurrencyLimit | bool,
        hedge: Hedge | None,
        clock: Clock | None,
    ) -> None:
        self.target = check_string(target, "target")
        if breaker_scope not in ("target", "method"):
            raise ValueError(f'breaker_scope= must be "target" or "method", got {breaker_scope!r}')
        self.by_method = breaker_scope == "method"
        self.rules = _Rules(retry_codes, failure_codes)
        self.total_timeout = (
            None if total_timeout is None else check_seconds(total_timeout, "total_timeout")
        )
        self.attempt_timeout = (
            None if attempt_timeout is None else check_seconds(attempt_timeout, "attempt_timeout")
        )
        check_attempt_within_total(
            self.attempt_timeout, self.total_timeout, attempt_timeout, total_timeout
        )
        if clock is not None:
            self.clock = resolve_clock(clock)
        elif isinstance(breaker, CircuitBreaker):
            self.clock = breaker.clock
        else:
            self.clock = SYSTEM_CLOCK
        self.breaker = self._resolve_breaker(breaker)
        if self.by_method and isinstance(self.breaker, CircuitBreaker):
            raise ValueError(
                'breaker_scope="method" needs a BreakerRegistry (or breaker=True), not one '
                "CircuitBreaker: every method would share it"
            )
        self.retry = self._resolve_retry(retry)
        self.limit = self._resolve_limit(concurrency_limit)
        self.hedge = self._resolve_hedge(hedge)

    def _resolve_breaker(
        self, breaker: CircuitBreaker | BreakerRegistry | bool
    ) -> CircuitBreaker | BreakerRegistry | None:
        if breaker is True:
            # The transport's defaults (Polly's standard handler): 10% failures
            # over 30 s with >= 100 calls opens the circuit for 5 s.
            return BreakerRegistry(
                max_size=_MAX_BREAKERS,
                failure_rate_threshold=0.1,
                minimum_calls=100,
                window=TimeWindow(seconds=30.0),
                open_duration=5.0,
                half_open_max_wait=self.total_timeout or self.attempt_timeout or 30.0,
                clock=self.clock,
            )
        if breaker is False:
            return None
        if not isinstance(breaker, (CircuitBreaker, BreakerRegistry)):
            raise TypeError(
                f"breaker= must be a CircuitBreaker, a BreakerRegistry, True or False, "
                f"got {breaker!r}"
            )
        return breaker

    def _resolve_retry(self, retry: Retry | bool) -> Retry | None:
        if retry is True:
            # The transport's default: 4 attempts, 0.2 s exponential full jitter up
            # to 5 s, a budget named after the target (gRPC A6 throttles per server).
            return Retry(
                on=self.rules.retryable,
                attempts=4,
                wait=Backoff(initial=0.2, maximum=5.0),
                budget=RetryBudget(self.target, clock=self.clock),
                max_retry_after=30.0,
                name=self.target,
                clock=self.clock,
            )
        if retry is False:
            return None
        if not isinstance(retry, Retry):
            raise TypeError(f"retry= must be a resilience.Retry, True or False, got {retry!r}")
        # A shallow copy (shares counters, events, budget): gRPC errors are
        # retried by the status rules, other exceptions by your `on=`.
        theirs = retry.on
        rules = self.rules

        def retryable(error: BaseException) -> bool:
            if isinstance(error, grpc.RpcError) and not isinstance(error, _Status):
                return rules.retryable(error)
            return theirs.matches(error)

        effective = copy.copy(retry)
        effective.on = ExceptionFilter(retryable, param="retry")
        return effective

    def _resolve_limit(self, value: ConcurrencyLimit | bool) -> ConcurrencyLimit | None:
        if value is False:
            return None
        if value is True:
            return ConcurrencyLimit(AIMDLimit(), name=self.target, clock=self.clock)
        if not isinstance(value, ConcurrencyLimit):
            raise TypeError(
                f"concurrency_limit= must be True, False or a resilience.ConcurrencyLimit, "
                f"got {value!r}"
            )
        return value

    def _resolve_hedge(self, hedge: Hedge | None) -> Hedge | None:
        """The target's hedge: a copy of `hedge` named after it, spending its retry budget.

        Without `non_fatal=`, the failures gRPC A6 calls non-fatal
        (`nonFatalStatusCodes`, by default the retry codes) send the next
        hedge at once; any other status is fatal.
        """
        if hedge is None:
            return None
        if not isinstance(hedge, Hedge):
            raise TypeError(f"hedge= must be a resilience.Hedge or None, got {hedge!r}")
        budget = None if self.retry is None else self.retry.budget
        made = hedge._for_target(self.target, budget)
        if not hedge.non_fatal:
            rules = self.rules

            def non_fatal(error: BaseException) -> bool:
                return (
                    isinstance(error, grpc.RpcError)
                    and not isinstance(error, _Status)
                    and _code_of(error) in rules.retry_codes
                )

            made.non_fatal = ExceptionFilter(non_fatal, param="non_fatal")
        return made

    # -- per call -------------------------------------------------------------------

    def breaker_for(self, method: str | bytes) -> CircuitBreaker | None:
        """The call's breaker; the method's name is decoded only for per-method breakers."""
        breaker = self.breaker
        if breaker is None or isinstance(breaker, CircuitBreaker):
            return breaker
        if self.by_method:
            return breaker.get(f"{self.target}{_method_name(method)}")
        return breaker.get(self.target)

    def enter(self, timeout: float | None) -> tuple[Token[Deadline | None] | None, Deadline | None]:
        """Open the call's total deadline: its `timeout`, else `total_timeout` (nested)."""
        seconds = self.total_timeout if timeout is None else _call_timeout(timeout)
        if seconds is None:
            return None, current_deadline()
        return enter_deadline(max(seconds, 0.0), self.clock)

    def details(
        self,
        details: grpc.ClientCallDetails | grpc.aio.ClientCallDetails,
        deadline: Deadline | None,
        previous: int,
        aio: bool,
    ) -> Any:
        """The call details of one attempt: the timeout clamped, the attempt count sent."""
        timeout = self.attempt_timeout
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                spent = _AioGrpcDeadlineExceededError if aio else GrpcDeadlineExceededError
                raise spent(self.target, deadline.budget, before_call=True)
            if timeout is None or left < timeout:
                timeout = left
        if timeout is not None and timeout > _NO_DEADLINE:
            timeout = None  # grpcio fails a deadline this far off at once (it overflows)
        metadata = details.metadata
        if previous:
            metadata = _with_attempts(metadata, previous, aio)
        if timeout == details.timeout and metadata is details.metadata:
            return details
        if aio:
            return grpc.aio.ClientCallDetails(
                details.method,
                timeout,
                cast("grpc.aio.Metadata | None", metadata),
                details.credentials,
                details.wait_for_ready,
            )
        sync = cast("grpc.ClientCallDetails", details)
        return _ClientCallDetails(
            sync.method,
            timeout,
            metadata,
            sync.credentials,
            sync.wait_for_ready,
            getattr(sync, "compression", None),
        )

    def acquire(self, breaker: CircuitBreaker | None) -> tuple[Permit | None, LimitPermit | None]:
        """The attempt's breaker permit and limit permit (raising the gRPC-shaped errors)."""
        permit = held = None
        try:
            if breaker is not None:
                permit = breaker.acquire()
            if self.limit is not None:
                held = self.limit.acquire()
        except BaseException as error:
            refused = _refused(error, permit, aio=False)
            if refused is error:
                raise
            raise refused from None
        return permit, held

    async def aacquire(
        self, breaker: CircuitBreaker | None
    ) -> tuple[Permit | None, LimitPermit | None]:
        """`acquire` for async code (a limit's wait is awaited, not blocked on)."""
        permit = held = None
        try:
            if breaker is not None:
                permit = await breaker.aacquire()
            if self.limit is not None:
                held = await self.limit.aacquire()
        except BaseException as error:
            refused = _refused(error, permit, aio=True)
            if refused is error:
                raise
            raise refused from None
        return permit, held

    def settle(
        self,
        permit: Permit | None,
        held: LimitPermit | None,
        error: BaseException | None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        """Settle an attempt's permits from how it ended: `error`, or `code` without one.

        A gRPC status decides by the status rules. resilience's own errors
        (an inner interceptor's open breaker...) and interrupts are classified
        by the breaker and the limit (IGNORED, DESIGN 15); any other exception
        raised on this side (a serializer's, grpcio's usage errors) says
        nothing about the server: the permits are released.
        """
        if error is not None:
            if isinstance(error, ResilienceError) or not isinstance(error, Exception):
                if permit is not None and not permit.settled:
                    permit.record_exception(error)
                if held is not None and not held.settled:
                    held.record_exception(error)
                return
            code = _code_of(error)
            if code is None:
                code = _Code.CANCELLED  # local: released below, like a cancellation
        if permit is not None and not permit.settled:
            if code is None or code is _Code.OK:
                permit.record_success()
            elif code in self.rules.failure_codes:
                permit.record_failure()
            elif code is _Code.CANCELLED:
                permit.release()  # cancelled (here or there): says nothing about the server
            else:
                permit.record_success()  # the caller's problem (INVALID_ARGUMENT...)
        if held is not None and not held.settled:
            if code in _DROP_CODES:
                held.record_drop()
            elif code is _Code.CANCELLED:
                held.release()
            else:
                held.record_success()

    def cut(
        self, error: BaseException, deadline: Deadline | None, aio: bool = False
    ) -> BaseException | None:
        """The `GrpcDeadlineExceededError` for a DEADLINE_EXCEEDED that is the deadline's."""
        if (
            deadline is None
            or isinstance(error, DeadlineExceededError)
            or _code_of(error) is not _Code.DEADLINE_EXCEEDED
            or deadline.remaining() > DEADLINE_SLACK
        ):
            return None
        cut = (_AioGrpcDeadlineExceededError if aio else GrpcDeadlineExceededError)(
            self.target, deadline.budget
        )
        cut.__cause__ = error
        return cut


def _refused(error: BaseException, permit: Permit | None, aio: bool) -> BaseException:
    """What a failed `acquire` raises: a refusal in its gRPC shape, else `error` itself.

    The breaker's permit, if one was taken before the limit refused, is released.
    """
    if permit is not None:
        permit.release()
    if isinstance(error, CircuitOpenError):
        opened = _AioGrpcCircuitOpenError if aio else GrpcCircuitOpenError
        return opened(error.name, error.state, error.retry_after)
    if isinstance(error, ConcurrencyLimitExceededError):
        full = _AioGrpcConcurrencyLimitExceededError if aio else GrpcConcurrencyLimitExceededError
        return full(error.name, error.limit, error.waited)
    return error


def _call_timeout(timeout: object) -> float:
    """A call's own `timeout=`, checked: seconds (0 or less: already spent), not NaN."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout= of a gRPC call takes seconds or None, got {timeout!r}")
    if math.isnan(timeout):
        raise ValueError("timeout= of a gRPC call cannot be NaN")
    return float(timeout)


def _with_attempts(metadata: Any, previous: int, aio: bool) -> Any:
    """`metadata` with `grpc-previous-rpc-attempts: previous` (replacing one already there)."""
    value = str(previous)
    if aio:
        fresh = grpc.aio.Metadata()
        for key, item in metadata or ():
            if key != PREVIOUS_ATTEMPTS_KEY:
                fresh.add(key, item)
        fresh.add(PREVIOUS_ATTEMPTS_KEY, value)
        return fresh
    kept = [item for item in metadata or () if item[0] != PREVIOUS_ATTEMPTS_KEY]
    kept.append((PREVIOUS_ATTEMPTS_KEY, value))
    return tuple(kept)


def _is_future_call(outcome: object) -> bool:
    """Whether a unary outcome is a `.future()` call rather than a finished one.

    A blocking call (`stub.Method(...)`, `.with_call(...)`) hands the
    interceptor a finished outcome; `.future()` hands it grpcio's call
    object, which may or may not have finished yet (a fast loopback call
    has). Told apart by what that object also is, an iterator (grpcio
    serves streams with the same class); `done()` would race.
    """
    return hasattr(type(outcome), "__next__")


def _is_future_continuation(continuation: object) -> bool:
    """Whether grpcio made this continuation for a `.future()` call.

    Known before the attempt, so that such a call (not retried) does not go
    through the retry, whose metrics would count it as a success at once.
    Read from grpcio's closure name; if a grpcio release renames it, the
    outcome's type still tells (`_is_future_call`).
    """
    return ".future.<locals>." in getattr(continuation, "__qualname__", "")


def _sync_code(call: Any) -> grpc.StatusCode | None:
    try:
        code = call.code()
    except Exception:  # noqa: BLE001
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def _watch_sync(
    client: _Client,
    call: Any,
    permit: Permit | None,
    held: LimitPermit | None,
    local_error: Callable[[], bool] | None = None,
) -> None:
    """Settle the permits of a sync call when it terminates (now, if it already has).

    grpcio runs `add_callback` callbacks when a call ends, except when the
    call object is garbage-collected unfinished (a stream the caller
    dropped): grpcio then cancels the RPC without calling them. A finalizer
    on the call settles the permits in that case, so the callback holds
    the call weakly (a strong reference would keep it alive forever).
    `local_error()` says whether the call failed on this side (its request
    iterator raised): the permits are then released, as for a cancellation.
    """
    if permit is None and held is None:
        return

    settled = threading.Lock()
    done = False

    def once() -> bool:
        nonlocal done
        with settled:
            if done:
                return False
            done = True
            return True

    # grpcio's call state outlives the call object: its code is the call's
    # end, or CANCELLED if grpcio cancelled it when collecting it. It tells a
    # call collected after it ended but before grpcio ran its callbacks (they
    # run after the waiting caller is woken) from one dropped unfinished.
    state = getattr(call, "_state", None)

    def on_collected() -> None:
        if once():
            code = getattr(state, "code", None)
            ended = code if isinstance(code, grpc.StatusCode) else _Code.CANCELLED
            client.settle(permit, held, None, ended)

    try:
        ref: Callable[[], Any] = weakref.ref(call)
        finalizer = weakref.finalize(call, on_collected)
        finalizer.atexit = False
    except TypeError:  # an outcome that takes no weak references: held, it has ended
        ref = lambda: call  # noqa: E731
        finalizer = None

    def on_end() -> None:
        ended = ref()
        if not once():
            return
        if finalizer is not None:
            finalizer.detach()
        if ended is None or (local_error is not None and local_error()):
            client.settle(permit, held, None, _Code.CANCELLED)
            return
        error = None
        exception = getattr(ended, "exception", None)
        if exception is not None:
            try:
                error = exception(timeout=0)
            except Exception:  # noqa: BLE001  (cancelled: the code says CANCELLED)
                error = None
        if error is not None and not isinstance(error, grpc.RpcError):
            client.settle(permit, held, error)
        else:
            client.settle(permit, held, None, _sync_code(ended))

    try:
        added = call.add_callback(on_end)
    except Exception:  # noqa: BLE001  (an outcome without callbacks: it has ended)
        added = False
    if not added:
        on_end()


_aio_settling: set[asyncio.Task[None]] = set()


def _watch_aio(client: _Client, call: Any, permit: Permit | None, held: LimitPermit | None) -> None:
    """Settle the permits of an aio call when it is done."""
    if permit is None and held is None:
        return

    async def settle() -> None:
        try:
            code = await call.code()
        except BaseException:
            client.settle(permit, held, None, _Code.CANCELLED)
            raise
        client.settle(permit, held, None, code)

    def on_done(_: object) -> None:
        task = asyncio.get_running_loop().create_task(settle())
        _aio_settling.add(task)
        task.add_done_callback(_aio_settling.discard)

    call.add_done_callback(on_done)


# -- sync ---------------------------------------------------------------------------


class _Options:
    """The constructor both interceptors share (keyword-only, validated)."""

    _client: _Client
    #: Whether `hedge=` is taken (grpc.aio only).
    _hedges = False

    def __init__(
        self,
        *,
        target: str,
        breaker: CircuitBreaker | BreakerRegistry | bool = True,
        breaker_scope: Literal["target", "method"] = "target",
        retry: Retry | bool = True,
        retry_codes: Collection[grpc.StatusCode] = RETRY_CODES,
        failure_codes: Collection[grpc.StatusCode] = FAILURE_CODES,
        total_timeout: float | None = None,
        attempt_timeout: float | None = None,
        concurrency_limit: ConcurrencyLimit | bool = False,
        hedge: Hedge | None = None,
        clock: Clock | None = None,
    ) -> None:
        if hedge is not None and not self._hedges:
            raise MisuseError(
                "ResilientClientInterceptor does not hedge (hedge=): a hedge runs attempts "
                "concurrently and cancels the losers, which a blocking grpcio call cannot "
                "do. Use resilience.grpc.AsyncResilientClientInterceptor(hedge=...) with a "
                "grpc.aio channel."
            )
        self._client = _Client(
            target=target,
            breaker=breaker,
            breaker_scope=breaker_scope,
            retry=retry,
            retry_codes=retry_codes,
            failure_codes=failure_codes,
            total_timeout=total_timeout,
            attempt_timeout=attempt_timeout,
            concurrency_limit=concurrency_limit,
            hedge=hedge,
            clock=clock,
        )

    @property
    def target(self) -> str:
        """The target's name: the name of its breaker, retry, budget and limit."""
        return self._client.target

    @property
    def breakers(self) -> CircuitBreaker | BreakerRegistry | None:
        """The registry of breakers, the one shared breaker, or None."""
        return self._client.breaker

    @property
    def retry(self) -> Retry | None:
        """The retry policy calls go through (your `Retry` as it runs here), or None."""
        return self._client.retry

    @property
    def concurrency_limit(self) -> ConcurrencyLimit | None:
        """The target's concurrency limit, or None."""
        return self._client.limit

    @property
    def hedge(self) -> Hedge | None:
        """The hedge unary calls go through (a copy of yours named after the target), or None."""
        return self._client.hedge

    def __repr__(self) -> str:
        return f"<{type(self).__name__} target={self._client.target!r}>"


class ResilientClientInterceptor(
    _Options,
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Deadline, budgeted retry and breaker for a sync grpcio channel.

    ```python
    channel = grpc.intercept_channel(
        grpc.insecure_channel(target, options=resilience.grpc.channel_options()),
        resilience.grpc.ResilientClientInterceptor(target=target),
    )
    ```

    Unary-unary calls are retried; unary-stream calls only while no
    message was received; client-streaming calls never (their requests are
    an iterator that cannot be replayed). Calls made with `.future()` get
    the breaker and the deadline, not retries (retrying would block).

    Args:
        target: Names the downstream (e.g. `"payments:50051"`): its breaker,
            retry, retry budget and concurrency limit are named after it (the
            policy names in metrics and events). Use one interceptor per channel.
        breaker: True for the default breakers (a `BreakerRegistry`: 10%
            failures over 30 s with >= 100 calls opens for 5 s), a
            `BreakerRegistry` of yours, one `CircuitBreaker` for every call,
            or False for none.
        breaker_scope: "target" (one breaker per target) or "method" (one per
            target and method, named `target/package.Service/Method`; needs
            a registry, not one `CircuitBreaker`).
        retry: True for the default retry (4 attempts, exponential backoff
            from 0.2 s with full jitter up to 5 s, a `RetryBudget` named after
            the target), a `resilience.Retry` of yours (gRPC errors are then
            retried by `retry_codes`, other exceptions by its `on=`), or False.
        retry_codes: The codes retried (default UNAVAILABLE). RESOURCE_EXHAUSTED
            is also retried when the server sends `grpc-retry-pushback-ms`,
            unless `retry_codes` is empty: then no gRPC error is retried.
        failure_codes: The codes a breaker counts as failures (default
            UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
            UNKNOWN); CANCELLED is ignored and every other code is a success.
        total_timeout: Seconds for a call that passes no `timeout=`, retries
            included (default None: none, as grpcio).
        attempt_timeout: Seconds per attempt at most (default None).
        concurrency_limit: True for a `ConcurrencyLimit(AIMDLimit())` named
            after the target, one of yours, or False (default).
        hedge: Not taken: raises `resilience.MisuseError` (a blocking call
            cannot be cancelled); hedging needs `AsyncResilientClientInterceptor`.
        clock: A `resilience.Clock` for deadlines, backoff and the default
            policies (a FakeClock in tests). Default: your breaker's, else the
            system clock.
    """

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Run one unary call through deadline, retry, breaker and limit."""
        client = self._client
        breaker = client.breaker_for(client_call_details.method)
        retry = client.retry
        token, deadline = client.enter(client_call_details.timeout)
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            details = client.details(client_call_details, deadline, attempts, aio=False)
            attempts += 1
            permit, held = client.acquire(breaker)
            try:
                outcome = continuation(details, request)
            except BaseException as exc:
                client.settle(permit, held, exc)
                raise
            if _is_future_call(outcome):  # `.future()`: settled when it ends, not retried
                _watch_sync(client, outcome, permit, held)
                return outcome
            error = outcome.exception()
            client.settle(permit, held, error)
            if error is not None:
                raise client.cut(error, deadline) or error
            return outcome

        future = _is_future_continuation(continuation)
        if future:
            retry = None  # not retried: not counted as a retried call's outcome either
        try:
            return retry.call(attempt) if retry is not None else attempt()
        except _REFUSALS as refused:
            if future:  # a failed future, whose code() answers (grpcio's own would say INTERNAL)
                return refused
            raise
        finally:
            if token is not None:
                leave_deadline(token)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Start a server-streaming call: retried only while no message was received."""
        client = self._client
        breaker = client.breaker_for(client_call_details.method)
        token, deadline = client.enter(client_call_details.timeout)
        stream = _RetryingStream(client, continuation, client_call_details, request, breaker)
        try:
            stream.start(deadline)
        except _REFUSALS as refused:
            stream.refuse(refused)  # raised on reading; code() answers (grpcio's: INTERNAL)
        finally:
            if token is not None:
                leave_deadline(token)
        return stream

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """A client-streaming call: breaker, limit and deadline; never retried."""
        return self._once(continuation, client_call_details, _Requests(request_iterator))

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """A bidirectional call: breaker, limit and deadline; never retried."""
        return self._once(continuation, client_call_details, _Requests(request_iterator))

    def _once(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        requests: _Requests,
    ) -> Any:
        client = self._client
        breaker = client.breaker_for(client_call_details.method)
        token, deadline = client.enter(client_call_details.timeout)
        try:
            details = client.details(client_call_details, deadline, 0, aio=False)
            permit, held = client.acquire(breaker)
            try:
                call = continuation(details, requests)
            except BaseException as exc:
                client.settle(permit, held, exc)
                raise
            _watch_sync(client, call, permit, held, requests.raised)
            return call
        finally:
            if token is not None:
                leave_deadline(token)


class _Requests:
    """A client-streaming call's request iterator that remembers whether it raised.

    grpcio ends such a call with UNKNOWN ("Exception iterating requests!"):
    the caller's bug, not the server's health, so its permits are released.
    """

    __slots__ = ("_iterator", "_raised")

    def __init__(self, requests: Iterator[Any]) -> None:
        self._iterator = iter(requests)
        self._raised = False

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            raise
        except BaseException:
            self._raised = True
            raise

    def raised(self) -> bool:
        """Whether the caller's iterator raised (rather than ended)."""
        return self._raised


if TYPE_CHECKING:
    _Future = grpc.Future[Any]
else:
    _Future = grpc.Future  # not generic at runtime


class _RetryingStream(grpc.Call, _Future):
    """A server-streaming call whose first message may come from a retried attempt.

    Behaves as grpcio's own call object (an iterator of responses that is a
    `grpc.Call` and a `grpc.Future`), each method answered by the attempt in
    use. The first `next()` runs the retry loop: an attempt that fails
    before any message is retried; once one message arrived, never.
    """

    def __init__(
        self,
        client: _Client,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        details: grpc.ClientCallDetails,
        request: Any,
        breaker: CircuitBreaker | None,
    ) -> None:
        self._client = client
        self._continuation = continuation
        self._details = details
        self._request = request
        self._breaker = breaker
        self._call: Any = None
        self._attempts = 0
        self._deadline: Deadline | None = None
        self._received = False
        self._failed = False
        self._refused: BaseException | None = None

    def refuse(self, error: BaseException) -> None:
        """End the stream before any attempt: `error` (one of ours) is what it answers."""
        self._call = self._refused = error

    def start(self, deadline: Deadline | None) -> None:
        """Start an attempt (the first at once; the next ones from the retry loop)."""
        if self._attempts == 0:
            self._deadline = deadline
        client = self._client
        details = client.details(self._details, deadline, self._attempts, aio=False)
        self._attempts += 1
        permit, held = client.acquire(self._breaker)
        try:
            call = self._continuation(details, self._request)
        except BaseException as exc:
            client.settle(permit, held, exc)
            raise
        _watch_sync(client, call, permit, held)
        self._call = call

    def _first(self) -> Any:
        """One attempt's first message (the next attempt starts if the last one failed)."""
        if self._failed:
            self._failed = False
            self.start(self._deadline)
        try:
            return next(self._call)
        except StopIteration:
            return _END
        except grpc.RpcError as error:
            self._failed = True
            cut = self._client.cut(error, self._deadline)
            if cut is not None:
                raise cut from error
            raise

    def __iter__(self) -> _RetryingStream:
        return self

    def __next__(self) -> Any:
        if self._refused is not None:
            raise self._refused
        if self._received:
            try:
                return next(self._call)
            except grpc.RpcError as error:
                cut = self._client.cut(error, self._deadline)
                if cut is not None:
                    raise cut from error
                raise
        self._received = True
        retry = self._client.retry
        token = None
        if self._deadline is not None:
            token, _ = enter_deadline(self._deadline.remaining(), self._deadline.clock)
        try:
            message = retry.call(self._first) if retry is not None else self._first()
        finally:
            if token is not None:
                leave_deadline(token)
        if message is _END:
            raise StopIteration
        return message

    # -- grpc.Call and grpc.Future, answered by the attempt in use ----------------------

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return cast("grpc.StatusCode", self._call.code())

    def details(self) -> str:
        return cast("str", self._call.details())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(fn)


# -- aio ----------------------------------------------------------------------------


class _AioInterceptor:
    """One kind of `grpc.aio` client interceptor, sharing its configuration with the others."""

    def __init__(self, client: _Client) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} target={self._client.target!r}>"


class _AioUnaryUnary(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Run one unary call through deadline, retry, breaker and limit."""
        client = self._client
        breaker = client.breaker_for(client_call_details.method)
        retry = client.retry
        token, deadline = client.enter(client_call_details.timeout)
        attempts = 0

        async def attempt() -> Any:
            nonlocal attempts
            details = client.details(client_call_details, deadline, attempts, aio=True)
            attempts += 1
            permit, held = await client.aacquire(breaker)
            call = None
            try:
                call = await continuation(details, request)
                await call
            except BaseException as exc:
                if call is not None and not isinstance(exc, Exception):
                    call.cancel()  # cancelled while waiting: the RPC goes too
                client.settle(permit, held, exc)
                if isinstance(exc, Exception):
                    cut = client.cut(exc, deadline, aio=True)
                    if cut is not None:
                        raise cut from exc
                raise
            client.settle(permit, held, None)
            return call

        hedge = client.hedge
        if hedge is not None:
            single = attempt

            async def attempt() -> Any:  # each retry is hedged again (the transport's rule)
                return await hedge.acall(single)

        try:
            return await (retry.acall(attempt) if retry is not None else attempt())
        finally:
            if token is not None:
                leave_deadline(token)


class _AioUnaryStream(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """A server-streaming call: retried only while no message was received."""
        client = self._client
        breaker = client.breaker_for(client_call_details.method)
        token, deadline = client.enter(client_call_details.timeout)
        try:
            call = await _aio_start(
                client, continuation, client_call_details, request, breaker, deadline, 0
            )
        finally:
            if token is not None:
                leave_deadline(token)
        return _AioRetryingStream(
            client, continuation, client_call_details, request, breaker, call, deadline
        )


class _AioStreamUnary(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        """A client-streaming call: breaker, limit and deadline; never retried."""
        return await _aio_once(self._client, continuation, client_call_details, request_iterator)


class _AioStreamStream(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        """A bidirectional call: breaker, limit and deadline; never retried."""
        return await _aio_once(self._client, continuation, client_call_details, request_iterator)


class AsyncResilientClientInterceptor(
    _Options, collections.abc.Sequence[grpc.aio.ClientInterceptor]
):
    """Deadline, budgeted retry and breaker for a `grpc.aio` channel (asyncio only).

    ```python
    channel = grpc.aio.insecure_channel(
        target,
        options=resilience.grpc.channel_options(),
        interceptors=resilience.grpc.AsyncResilientClientInterceptor(target=target),
    )
    ```

    A `grpc.aio` channel applies each interceptor object to one kind of
    call only (the first kind it implements), so this is a sequence of four
    interceptors, one per kind, sharing one configuration: pass it as
    `interceptors=` (or unpack it among yours: `[*resilient, other]`).
    Unary-unary calls are retried; unary-stream calls only while no message
    was received; client-streaming calls never. grpc.aio runs on asyncio
    only (not trio).

    Args:
        target: Names the downstream (e.g. `"payments:50051"`): its breaker,
            retry, retry budget and concurrency limit are named after it (the
            policy names in metrics and events). Use one interceptor per channel.
        breaker: True for the default breakers (a `BreakerRegistry`: 10%
            failures over 30 s with >= 100 calls opens for 5 s), a
            `BreakerRegistry` of yours, one `CircuitBreaker` for every call,
            or False for none.
        breaker_scope: "target" (one breaker per target) or "method" (one per
            target and method, named `target/package.Service/Method`; needs
            a registry, not one `CircuitBreaker`).
        retry: True for the default retry (4 attempts, exponential backoff
            from 0.2 s with full jitter up to 5 s, a `RetryBudget` named after
            the target), a `resilience.Retry` of yours (gRPC errors are then
            retried by `retry_codes`, other exceptions by its `on=`), or False.
        retry_codes: The codes retried (default UNAVAILABLE). RESOURCE_EXHAUSTED
            is also retried when the server sends `grpc-retry-pushback-ms`,
            unless `retry_codes` is empty: then no gRPC error is retried.
        failure_codes: The codes a breaker counts as failures (default
            UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
            UNKNOWN); CANCELLED is ignored and every other code is a success.
        total_timeout: Seconds for a call that passes no `timeout=`, retries
            included (default None: none, as grpcio).
        attempt_timeout: Seconds per attempt at most (default None).
        concurrency_limit: True for a `ConcurrencyLimit(AIMDLimit())` named
            after the target, one of yours, or False (default).
        hedge: A `resilience.Hedge` for unary-unary calls (streams are never
            hedged): a copy named after the target, with its own latencies,
            spending the target's retry budget. Each attempt has its own
            breaker permit and limit slot and sends `grpc-previous-rpc-attempts`;
            the losers' RPCs are cancelled. Without its `non_fatal=`, a status
            in `retry_codes` sends the next hedge at once; others are fatal.
            With a retry too, the retry runs outside the hedge (see the guide).
        clock: A `resilience.Clock` for deadlines, backoff and the default
            policies (a FakeClock in tests). Default: your breaker's, else the
            system clock.
    """

    _hedges = True

    @functools.cached_property
    def _kinds(self) -> tuple[grpc.aio.ClientInterceptor, ...]:
        client = self._client
        return (
            _AioUnaryUnary(client),
            _AioUnaryStream(client),
            _AioStreamUnary(client),
            _AioStreamStream(client),
        )

    @overload
    def __getitem__(self, index: int) -> grpc.aio.ClientInterceptor: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[grpc.aio.ClientInterceptor, ...]: ...

    def __getitem__(
        self, index: int | slice
    ) -> grpc.aio.ClientInterceptor | tuple[grpc.aio.ClientInterceptor, ...]:
        return self._kinds[index]

    def __len__(self) -> int:
        return 4

    def __repr__(self) -> str:
        # grpc.aio's error for `interceptors=[this]` shows it: say what to do.
        return (
            f"<AsyncResilientClientInterceptor target={self._client.target!r}: a sequence of "
            f"4 interceptors, pass it as interceptors= or unpack it: [*interceptor, ...]>"
        )


async def _aio_start(
    client: _Client,
    continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
    original: grpc.aio.ClientCallDetails,
    request: Any,
    breaker: CircuitBreaker | None,
    deadline: Deadline | None,
    previous: int,
) -> Any:
    """Start one attempt of a streaming call; its permits settle when it is done."""
    details = client.details(original, deadline, previous, aio=True)
    permit, held = await client.aacquire(breaker)
    try:
        call = await continuation(details, request)
    except BaseException as exc:
        client.settle(permit, held, exc)
        raise
    _watch_aio(client, call, permit, held)
    return call


async def _aio_once(
    client: _Client,
    continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
    original: grpc.aio.ClientCallDetails,
    request: Any,
) -> Any:
    """A client-streaming call: one attempt, under the breaker, the limit and the deadline."""
    breaker = client.breaker_for(original.method)
    token, deadline = client.enter(original.timeout)
    try:
        return await _aio_start(client, continuation, original, request, breaker, deadline, 0)
    finally:
        if token is not None:
            leave_deadline(token)


if TYPE_CHECKING:
    _AioStreamCall = grpc.aio.UnaryStreamCall[Any, Any]
else:
    _AioStreamCall = grpc.aio.UnaryStreamCall  # not generic at runtime


class _AioRetryingStream(_AioStreamCall):
    """A `grpc.aio` server-streaming call whose first message may come from a retried attempt.

    Each method is answered by the attempt in use. Reading the first message
    runs the retry loop: an attempt that fails before any message is
    retried; once one message arrived, never.
    """

    def __init__(
        self,
        client: _Client,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
        breaker: CircuitBreaker | None,
        call: Any,
        deadline: Deadline | None,
    ) -> None:
        self._client = client
        self._continuation = continuation
        self._details = details
        self._request = request
        self._breaker = breaker
        self._call = call
        self._deadline = deadline
        self._attempts = 1
        self._failed = False
        self._messages: AsyncIterator[Any] | None = None

    async def _first(self) -> Any:
        """One attempt's first message (the next attempt starts if the last one failed)."""
        client = self._client
        if self._failed:
            self._failed = False
            self._call = await _aio_start(
                client,
                self._continuation,
                self._details,
                self._request,
                self._breaker,
                self._deadline,
                self._attempts,
            )
            self._attempts += 1
        try:
            message = await self._call.read()
        except grpc.RpcError as error:
            self._failed = True
            cut = client.cut(error, self._deadline, aio=True)
            if cut is not None:
                raise cut from error
            raise
        return _END if message is grpc.aio.EOF else message

    async def _read_all(self) -> AsyncIterator[Any]:
        client, deadline, retry = self._client, self._deadline, self._client.retry
        try:
            token = None
            if deadline is not None:
                token, _ = enter_deadline(deadline.remaining(), deadline.clock)
            try:
                message = await (retry.acall(self._first) if retry is not None else self._first())
            finally:
                if token is not None:
                    leave_deadline(token)
            while message is not _END:
                yield message
                try:
                    message = await self._call.read()
                except grpc.RpcError as error:
                    cut = client.cut(error, deadline, aio=True)
                    if cut is not None:
                        raise cut from error
                    raise
                if message is grpc.aio.EOF:
                    message = _END
        finally:
            if not self._call.done():
                self._call.cancel()  # the reader left early: the attempt goes too

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._messages is None:
            self._messages = self._read_all()
        return self._messages

    async def read(self) -> Any:
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    # -- the rest of grpc.aio.UnaryStreamCall, answered by the attempt in use ------------

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: Any) -> None:
        self._call.add_done_callback(callback)

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return cast("grpc.StatusCode", await self._call.code())

    async def details(self) -> str:
        return cast("str", await self._call.details())

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()


# -- server side ----------------------------------------------------------------------


class _DeadlineOptions:
    """What both deadline server interceptors share."""

    def __init__(
        self,
        *,
        max_seconds: float = 30.0,
        default: float | None = None,
        safety_margin: float = 0.0,
        map_errors: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.map_errors = check_bool(map_errors, "map_errors")
        self.max_seconds, self.default, self.safety_margin = check_incoming_budget(
            max_seconds, default, safety_margin
        )
        self.clock = resolve_clock(clock)

    def budget(self, context: Any) -> float | None:
        """The handler's budget: the caller's time remaining, clamped, minus the margin."""
        left = cast("float | None", context.time_remaining())
        if left is None or left > _NO_DEADLINE:  # sync grpcio: ~9.2e18 s without a deadline
            return self.default
        return max(min(left, self.max_seconds) - self.safety_margin, 0.0)

    def refused(self, exc: BaseException, context: Any) -> tuple[grpc.StatusCode, str] | None:
        """The status to abort with for a handler's error (as the HTTP middleware answers).

        Its pushback, if any, is set on `context` as trailing metadata. None:
        not one of resilience's refusals (or `map_errors=False`).
        """
        if not (self.map_errors and isinstance(exc, Exception)):
            return None
        refusal = refusal_of(exc)
        if refusal is None:
            return None
        code, details, trailing = _status_of(refusal)
        if trailing:
            context.set_trailing_metadata(trailing)
        return code, details

    def __repr__(self) -> str:
        return f"<{type(self).__name__} max_seconds={self.max_seconds!r}>"


_REFUSED_DEADLINE = "deadline exceeded: no time was left to finish the call"
_REFUSED_SHED = "temporarily unable to handle the call; retry later"


def _status_of(refusal: Refusal) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status, details and trailing metadata of a refused handler call.

    UNAVAILABLE (retried by gRPC A6's example policy) with the pushback the
    refusing policy knows (a breaker's remaining open time, whole ms rounded
    up, at most a day); DEADLINE_EXCEEDED for a deadline that ran out.
    """
    if refusal.outcome == "deadline_exceeded":
        return _Code.DEADLINE_EXCEEDED, _REFUSED_DEADLINE, ()
    if refusal.retry_after is None:
        return _Code.UNAVAILABLE, _REFUSED_SHED, ()
    return (
        _Code.UNAVAILABLE,
        _REFUSED_SHED,
        ((PUSHBACK_KEY, str(math.ceil(refusal.retry_after * 1000))),),
    )


def _abort(options: _DeadlineOptions, exc: BaseException, context: Any) -> None:
    """Abort a sync handler's call with the status `exc` stands for; return if none."""
    status = options.refused(exc, context)
    if status is not None:
        context.abort(*status)  # raises: the status is sent


async def _aabort(options: _DeadlineOptions, exc: BaseException, context: Any) -> None:
    """`_abort` for grpc.aio handlers."""
    status = options.refused(exc, context)
    if status is not None:
        await context.abort(*status)


#: A method handler's behaviours, and whether each answers with a stream.
_HANDLER_KINDS = (
    ("unary_unary", False),
    ("unary_stream", True),
    ("stream_unary", False),
    ("stream_stream", True),
)


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], wrap: Callable[[Callable[..., Any], bool], Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with each of its behaviours replaced by `wrap(behaviour, streams)`."""
    wrapped = {}
    for kind, streams in _HANDLER_KINDS:
        behaviour = getattr(handler, kind, None)
        if behaviour is not None:
            wrapped[kind] = wrap(behaviour, streams)
    return cast("grpc.RpcMethodHandler[Any, Any]", cast("Any", handler)._replace(**wrapped))


def _sync_behaviour(options: _DeadlineOptions, behaviour: Callable[..., Any], streams: bool) -> Any:
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        budget = options.budget(context)
        token = None if budget is None else enter_deadline(budget, options.clock)[0]
        try:
            return behaviour(request, context)
        except Exception as exc:
            _abort(options, exc, context)
            raise
        finally:
            if token is not None:
                leave_deadline(token)

    def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        budget = options.budget(context)
        # Each step of the handler's generator runs inside the deadline (entered
        # per step: the generator may be closed from another thread).
        entered = None if budget is None else enter_deadline(budget, options.clock)
        try:
            iterator = iter(behaviour(request, context))
        except Exception as exc:
            _abort(options, exc, context)
            raise
        finally:
            if entered is not None:
                leave_deadline(entered[0])
        while True:
            token = None
            if entered is not None:
                token, _ = enter_deadline(entered[1].remaining(), options.clock)
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                _abort(options, exc, context)
                raise
            finally:
                if token is not None:
                    leave_deadline(token)
            yield item

    return streaming if streams else unary


class DeadlineServerInterceptor(_DeadlineOptions, grpc.ServerInterceptor):
    """Run each sync grpcio handler inside the deadline its caller set.

    ```python
    server = grpc.server(executor, interceptors=[resilience.grpc.DeadlineServerInterceptor()])
    ```

    The handler's `context.time_remaining()` (clamped to `max_seconds`,
    less `safety_margin`) becomes a `resilience.deadline`: the calls it
    makes through a `ResilientClientInterceptor` or a `ResilientTransport`
    get what is left, so a chain of HTTP and gRPC hops shares one budget.

    Args:
        max_seconds: The largest budget taken from a caller (default 30).
        default: The budget of a call that came without a deadline (default:
            none).
        safety_margin: Seconds kept back from the caller's budget, for the
            handler to answer before the caller gives up (default 0).
        map_errors: Answer resilience's errors escaping the handler with
            their status, as the HTTP middleware does (default True): a
            `DeadlineExceededError` with DEADLINE_EXCEEDED, an open breaker
            or a full bulkhead or limit with UNAVAILABLE (and
            `grpc-retry-pushback-ms` when the breaker says when it admits
            calls again). False: grpcio's UNKNOWN, as without it.
        clock: A `resilience.Clock`.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler's behaviour in the caller's deadline."""
        handler = continuation(handler_call_details)
        return None if handler is None else _wrap_handler(handler, self._wrap)

    def _wrap(self, behaviour: Callable[..., Any], streams: bool) -> Any:
        if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
            raise MisuseError(
                "DeadlineServerInterceptor wraps sync grpcio handlers; for a "
                "grpc.aio server use resilience.grpc.AsyncDeadlineServerInterceptor"
            )
        return _sync_behaviour(self, behaviour, streams)


def _aio_behaviour(options: _DeadlineOptions, behaviour: Callable[..., Any], streams: bool) -> Any:
    if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        # A plain function or generator: grpc.aio runs it in its migration
        # thread pool, so the deadline is entered there, as on a sync server.
        return _sync_behaviour(options, behaviour, streams)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        budget = options.budget(context)
        token = None if budget is None else enter_deadline(budget, options.clock)[0]
        try:
            return await behaviour(request, context)
        except Exception as exc:
            await _aabort(options, exc, context)
            raise
        finally:
            if token is not None:
                leave_deadline(token)

    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        budget = options.budget(context)
        token = None if budget is None else enter_deadline(budget, options.clock)[0]
        try:
            result = behaviour(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a handler that writes with context.write() and returns
                await result
        except Exception as exc:
            await _aabort(options, exc, context)
            raise
        finally:
            if token is not None:
                # A generator closed by the collector runs this in another context.
                with contextlib.suppress(ValueError):
                    leave_deadline(token)

    return streaming if streams else unary


class AsyncDeadlineServerInterceptor(_DeadlineOptions, grpc.aio.ServerInterceptor):
    """Run each `grpc.aio` handler inside the deadline its caller set.

    ```python
    server = grpc.aio.server(interceptors=[resilience.grpc.AsyncDeadlineServerInterceptor()])
    ```

    The same as `DeadlineServerInterceptor`, for `grpc.aio` servers.

    Args:
        max_seconds: The largest budget taken from a caller (default 30).
        default: The budget of a call that came without a deadline (default:
            none).
        safety_margin: Seconds kept back from the caller's budget, for the
            handler to answer before the caller gives up (default 0).
        map_errors: Answer resilience's errors escaping the handler with
            their status, as the HTTP middleware does (default True): a
            `DeadlineExceededError` with DEADLINE_EXCEEDED, an open breaker
            or a full bulkhead or limit with UNAVAILABLE (and
            `grpc-retry-pushback-ms` when the breaker says when it admits
            calls again). False: grpcio's UNKNOWN, as without it.
        clock: A `resilience.Clock`.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler's behaviour in the caller's deadline."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap_handler(handler, functools.partial(_aio_behaviour, self))
