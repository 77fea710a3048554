"""Resilient outbound HTTP for httpx: `httpx.Client(transport=ResilientTransport())`.

Every request goes through: total deadline -> retry (with a budget) ->
circuit breaker per origin -> attempt timeout -> the inner transport
(DESIGN section 10). The inner transport is an `httpx.HTTPTransport` built
from this transport's keyword arguments, or one you pass.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import difflib
import functools
import inspect
import operator
import sys
import threading
import uuid
from collections import OrderedDict, deque
from types import EllipsisType, FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, Self, cast

import httpx

from ._backoff import Backoff
from ._budget import RetryBudget
from ._clock import SYSTEM_CLOCK, Clock, resolve_clock
from ._compose import MisuseError
from ._deadline import (
    DEADLINE_HEADER,
    DEADLINE_SLACK,
    Deadline,
    current_deadline,
    enter_deadline,
    leave_deadline,
)
from ._hedge import Hedge
from ._limit import ConcurrencyLimit, LimitPermit
from ._limit_algorithms import AIMDLimit
from ._outcome import ExceptionFilter
from ._retry import Retry, RetryExhaustedError, _discard_for_this_call
from ._tracking import untrack
from ._validate import check_attempt_within_total, check_bool, check_int, check_seconds
from .breaker import BreakerRegistry, CircuitBreaker, Permit, TimeWindow
from .errors import CircuitOpenError, ConcurrencyLimitExceededError, DeadlineExceededError
from .events import ObserverHub

if TYPE_CHECKING:
    import ssl
    from collections.abc import (
        AsyncIterator,
        Callable,
        Collection,
        Container,
        Iterable,
        Iterator,
        Mapping,
    )
    from contextvars import Token
    from types import TracebackType

    from ._state import State

__all__ = [
    "AsyncResilientTransport",
    "HTTPCircuitOpenError",
    "HTTPConcurrencyLimitExceededError",
    "HTTPDeadlineExceededError",
    "ResilientTransport",
]

#: Methods retried by default: idempotent per RFC 9110 (as urllib3 and httpx-retries).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses retried by default (transient: Polly's standard handler and Envoy's 5xx + 429).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_OVERRIDES = frozenset(
    {"retry", "breaker", "concurrency_limit", "hedge", "total_timeout", "attempt_timeout"}
)
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
_TIMEOUT_KEY_SET = frozenset(_TIMEOUT_KEYS)
_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})
#: Errors that say nothing about the server: the request itself is wrong (its
#: scheme or URL, bytes httpx refuses to send, a body stream already consumed),
#: or the client's own connection pool had no connection free in time (like a
#: full bulkhead: retrying work the client shed keeps its pool full). The
#: default retry does not retry them and every breaker counts them as IGNORED.
#: (`httpx.ProxyError` is not one of them: it is also how "the proxy cannot
#: reach the origin" shows up.)
NON_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.InvalidURL,
    httpx.StreamError,
    httpx.PoolTimeout,
)
#: The default total timeout, in seconds.
_TOTAL_TIMEOUT = 30.0
#: The most origins that get a default retry of their own (as the default breakers).
_MAX_ORIGINS = 1000


class _Default(float):
    """A default number, told apart by identity from the same number passed on purpose."""

    __slots__ = ()


#: `attempt_timeout`'s default (10 s), shortened to a shorter total timeout
#: when `attempt_timeout` is not given; `10.0` passed on purpose is checked.
_ATTEMPT_TIMEOUT = _Default(10.0)
#: What `httpx.HTTPTransport` and `httpx.AsyncHTTPTransport` take (httpx 0.28),
#: with their defaults: passed on to the inner transport that they build.
_HTTPX_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {
        "verify": True,
        "cert": None,
        "trust_env": True,
        "http1": True,
        "http2": False,
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
        "proxy": None,
        "uds": None,
        "local_address": None,
        "retries": 0,
        "socket_options": None,
    }
)


class HTTPCircuitOpenError(CircuitOpenError, httpx.TransportError):
    """The origin's breaker is open: a `CircuitOpenError` that httpx code also catches."""

    def __init__(
        self,
        name: str,
        state: State,
        retry_after: float | None,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        Exception.__init__(self, name, state, retry_after)
        self._request = request


class HTTPConcurrencyLimitExceededError(ConcurrencyLimitExceededError, httpx.TransportError):
    """The origin's concurrency limit is reached: also an `httpx.TransportError`.

    A `ConcurrencyLimitExceededError` (so a `BulkheadFullError`: breakers
    ignore it and the default retry does not retry it) that httpx code
    catches too. `name` is the limit's name (the origin, for the default
    per-origin limits), `limit` the limit in force, `waited` the seconds
    spent waiting for a slot (the limit's `max_wait`).
    """

    def __init__(
        self,
        name: str,
        limit: int,
        waited: float = 0.0,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        Exception.__init__(self, name, limit, waited)
        self._request = request


if TYPE_CHECKING:
    ConcurrencyLimitOption = ConcurrencyLimit | Callable[[str], ConcurrencyLimit] | bool | None


class HTTPDeadlineExceededError(DeadlineExceededError, httpx.TimeoutException):
    """The deadline ran out: a `DeadlineExceededError` and an `httpx.TimeoutException`.

    `before_call` is True when nothing was sent (the deadline was spent before
    the attempt started). It is False when the deadline ran out during an
    attempt, while waiting for a connection, the response or its body: the
    error is then raised from the httpx timeout that fired (`__cause__`).
    `name` is the origin (`scheme://host:port`).
    """

    def __init__(
        self,
        name: str | None = None,
        budget: float | None = None,
        *,
        request: httpx.Request | None = None,
        before_call: bool = False,
    ) -> None:
        DeadlineExceededError.__init__(self, name, budget, before_call=before_call)
        self._request = request


def default_failure_status(status: int) -> bool:
    """The default `failure_status=`: 5xx and 429; other 4xx are the caller's problem."""
    return status >= 500 or status == 429


def _transient(exc: BaseException) -> bool:
    """What the default retry retries: transport errors, except those no retry can fix."""
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, NON_RETRYABLE_ERRORS)


class _Pipeline:
    """What the sync and async transports share: configuration and decisions."""

    def __init__(
        self,
        *,
        total_timeout: float | None,
        attempt_timeout: float | None,
        retry: Retry | bool | None,
        breaker: CircuitBreaker | BreakerRegistry | bool | None,
        concurrency_limit: ConcurrencyLimitOption,
        retry_methods: Collection[str],
        retry_statuses: Container[int],
        failure_status: Callable[[int], bool],
        idempotency_key: bool,
        buffer_bodies: bool,
        max_drain_bytes: int,
        send_deadline_header: bool,
        half_open_max_wait: float | EllipsisType | None,
        clock: Clock | None,
        hedge: Hedge | None = None,
    ) -> None:
        self.total_timeout = (
            None if total_timeout is None else check_seconds(total_timeout, "total_timeout")
        )
        if type(attempt_timeout) is _Default:
            # Not given: 10 s, or the total timeout if that is shorter.
            attempt_timeout = float(attempt_timeout)
            if self.total_timeout is not None:
                attempt_timeout = min(attempt_timeout, self.total_timeout)
        self.attempt_timeout = (
            None if attempt_timeout is None else check_seconds(attempt_timeout, "attempt_timeout")
        )
        check_attempt_within_total(
            self.attempt_timeout, self.total_timeout, attempt_timeout, total_timeout
        )
        if not callable(failure_status):
            raise TypeError(
                f"failure_status= must be callable(status) -> bool, got {failure_status!r}"
            )
        self.failure_status = failure_status
        self.retry_methods = _methods(retry_methods)
        self.retry_statuses = _statuses(retry_statuses)
        self.idempotency_key = check_bool(idempotency_key, "idempotency_key")
        self.buffer_bodies = check_bool(buffer_bodies, "buffer_bodies")
        self.max_drain_bytes = check_int(max_drain_bytes, "max_drain_bytes", minimum=0)
        self.send_deadline_header = check_bool(send_deadline_header, "send_deadline_header")
        #: The clock given as `clock=`, or None: then each request uses its
        #: breaker's clock (the system clock without a breaker).
        self.clock = None if clock is None else resolve_clock(clock)
        self._policy_clock = resolve_clock(clock)  # for the default breakers and retries
        #: The retry policy as configured: yours, the default, or None.
        self.retry = self._resolve_retry(retry)
        # What runs a request's retries: each origin's copy of the default, or
        # yours (with the status rule when it has no result rule of its own).
        self._default_retry = self.retry if isinstance(self.retry, _DefaultRetry) else None
        self._call_retry = None if self._default_retry is not None else self.retry
        if self._call_retry is not None and self._call_retry.retry_if_result is None:
            self._call_retry = _with_result_rule(self._call_retry, self.retryable_status)
        if half_open_max_wait is ...:
            # A probe that has not reported after the longest a request may take
            # is taken as lost (a response held open, never read nor closed).
            self.half_open_max_wait: float | None = (
                self.total_timeout or self.attempt_timeout or _TOTAL_TIMEOUT
            )
        elif breaker is not None and breaker is not True:
            raise TypeError(
                f"half_open_max_wait= configures the transport's default breakers "
                f"(breaker=True), not breaker={breaker!r}: set it on your own "
                f"CircuitBreaker or BreakerRegistry"
            )
        else:
            self.half_open_max_wait = (
                None
                if half_open_max_wait is None
                else check_seconds(half_open_max_wait, "half_open_max_wait")
            )
        # Split once here: isinstance on these ABC-derived classes is slow per request.
        resolved = self._resolve_breaker(breaker)
        self._registry = resolved if isinstance(resolved, BreakerRegistry) else None
        self._shared_breaker = resolved if isinstance(resolved, CircuitBreaker) else None
        self._origin_names: dict[tuple[object, ...], str] = {}
        #: Whether a request's origin is looked up: for its breaker or its retry.
        self._by_origin = self._registry is not None or self._default_retry is not None
        #: Permits of streamed responses not settled yet, by id of their body
        #: stream: whoever pops one settles it (the stream when it closes, fails
        #: or is collected, or `abandon_open` when the transport closes).
        self.open_permits: dict[int, Permit] = {}
        #: The same for the concurrency-limit permits of streamed responses.
        self.open_limit_permits: dict[int, LimitPermit] = {}
        self._shared_limit, self._limit_factory = self._resolve_limit(concurrency_limit)
        #: Whether requests take a concurrency-limit permit at all.
        self.limited = self._shared_limit is not None or self._limit_factory is not None
        self._limits: OrderedDict[str, ConcurrencyLimit] = OrderedDict()
        self._limits_lock = threading.Lock()
        if hedge is not None and not isinstance(hedge, Hedge):
            raise TypeError(f"hedge= must be a resilience.Hedge or None, got {hedge!r}")
        #: The hedging policy as configured, or None; each origin runs its own copy.
        self.hedge = hedge
        self._hedges: OrderedDict[tuple[str, RetryBudget | None], Hedge] = OrderedDict()

    def retryable_status(self, response: httpx.Response) -> bool:
        """The status rule of the default retry (and of a `Retry` that has none)."""
        return response.status_code in self.retry_statuses

    def _resolve_retry(self, retry: Retry | bool | None) -> Retry | None:
        if retry is None or retry is True:
            # Polly's standard HTTP handler: 3 retries, exponential with jitter
            # (base 2 s there; 0.2 s here, for service-to-service calls), Retry-After
            # honoured. Each origin gets its own copy, with its own budget.
            return _DefaultRetry(self.retryable_status, self._policy_clock)
        if retry is False:
            return None
        if not isinstance(retry, Retry):
            raise TypeError(f"retry= must be a resilience.Retry, True or False, got {retry!r}")
        return retry

    def _resolve_breaker(
        self, breaker: CircuitBreaker | BreakerRegistry | bool | None
    ) -> CircuitBreaker | BreakerRegistry | None:
        if breaker is None or breaker is True:
            # Polly's standard handler: 10% failures over 30 s with >= 100 calls
            # opens the circuit for 5 s; one breaker per origin.
            window = max(30.0, 2 * (self.attempt_timeout or 0))
            return BreakerRegistry(
                max_size=_MAX_ORIGINS,
                failure_rate_threshold=0.1,
                minimum_calls=100,
                window=TimeWindow(seconds=window),
                open_duration=5.0,
                half_open_max_wait=self.half_open_max_wait,
                clock=self._policy_clock,
            )
        if breaker is False:
            return None
        if not isinstance(breaker, (CircuitBreaker, BreakerRegistry)):
            raise TypeError(
                f"breaker= must be a CircuitBreaker, a BreakerRegistry, True or False, "
                f"got {breaker!r}"
            )
        return breaker

    @property
    def breakers(self) -> CircuitBreaker | BreakerRegistry | None:
        """The registry of per-origin breakers, the one shared breaker, or None."""
        return self._registry if self._registry is not None else self._shared_breaker

    def _resolve_limit(
        self, value: ConcurrencyLimitOption
    ) -> tuple[ConcurrencyLimit | None, Callable[[str], ConcurrencyLimit] | None]:
        """(the one shared limit, the factory of per-origin limits); both None when off."""
        if value is None or value is False:
            return None, None
        if isinstance(value, ConcurrencyLimit):  # callable too (a decorator): checked first
            return value, None
        if value is True:
            clock = self._policy_clock
            return None, lambda origin: ConcurrencyLimit(AIMDLimit(), name=origin, clock=clock)
        if not callable(value):
            raise TypeError(
                f"concurrency_limit= must be True, False, a resilience.ConcurrencyLimit or a "
                f"callable(origin) -> ConcurrencyLimit, got {value!r}"
            )
        return None, value

    @property
    def concurrency_limits(self) -> ConcurrencyLimit | Mapping[str, ConcurrencyLimit] | None:
        """The shared limit, the per-origin limits by origin (a snapshot), or None."""
        if self._shared_limit is not None:
            return self._shared_limit
        if self._limit_factory is None:
            return None
        with self._limits_lock:
            return MappingProxyType(dict(self._limits))

    def limit_for(
        self, request: httpx.Request, options: Mapping[str, Any]
    ) -> ConcurrencyLimit | None:
        """The concurrency limit this request's attempts go through, or None."""
        if options and options.get("concurrency_limit") is False:
            return None
        if self._shared_limit is not None:
            return self._shared_limit
        url = request.url
        key = _url_origin(url._uri_reference) if _PARSED_URLS else _public_origin(url)
        origin = self._origin_names.get(key) or self.origin_name(url)
        limit = self._limits.get(origin)
        if limit is None:
            return self._new_limit(origin)
        with self._limits_lock, contextlib.suppress(KeyError):
            self._limits.move_to_end(origin)  # used now: the least recently used goes first
        return limit

    def _new_limit(self, origin: str) -> ConcurrencyLimit:
        """The limit of `origin`, made by the factory on first use; at most 1,000 kept."""
        made = cast("Callable[[str], ConcurrencyLimit]", self._limit_factory)(origin)
        if not isinstance(made, ConcurrencyLimit):
            raise TypeError(
                f"concurrency_limit= must return a resilience.ConcurrencyLimit for origin "
                f"{origin!r}, got {made!r}"
            )
        with self._limits_lock:
            limit = self._limits.get(origin)
            if limit is not None:  # another thread made it first
                return limit
            if len(self._limits) >= _MAX_ORIGINS:
                # The least recently used limit with nothing in flight goes: one in
                # use is never replaced by a fresh one (that would double its
                # origin's concurrency). If every limit is busy, the oldest goes.
                idle = next(
                    (name for name, kept in self._limits.items() if kept.in_flight == 0),
                    next(iter(self._limits)),
                )
                del self._limits[idle]
            self._limits[origin] = made
            return made

    # -- per request ---------------------------------------------------------------

    def options(self, request: httpx.Request) -> Mapping[str, Any]:
        """Per-request overrides from request.extensions["resilience"], validated."""
        overrides = request.extensions.get("resilience")
        if overrides is None:
            return _NO_OPTIONS
        if not isinstance(overrides, dict):
            raise TypeError(f'request.extensions["resilience"] must be a dict, got {overrides!r}')
        unknown = overrides.keys() - _OVERRIDES
        if unknown:
            raise ValueError(
                f'unknown keys in request.extensions["resilience"]: {sorted(unknown)}; '
                f"known: {sorted(_OVERRIDES)}"
            )
        for key in ("retry", "breaker", "concurrency_limit", "hedge"):
            value = overrides.get(key)
            if value is not None and not isinstance(value, bool):
                raise TypeError(
                    f'request.extensions["resilience"]["{key}"] must be True, False or None '
                    f"(the transport's setting), got {value!r}"
                )
        for key in ("total_timeout", "attempt_timeout"):
            if overrides.get(key) is not None:
                check_seconds(overrides[key], f'request.extensions["resilience"]["{key}"]')
        return overrides

    def origin_name(self, url: httpx.URL) -> str:
        """`scheme://host:port` of `url`: the name of its breaker, retry and budget."""
        origin = _url_origin(url._uri_reference) if _PARSED_URLS else _public_origin(url)
        name = self._origin_names.get(origin)
        if name is None:
            if len(self._origin_names) > 4096:  # bounded, like the registry
                self._origin_names.clear()
            name = self._origin_names[origin] = _origin_name(url)
        return name

    def route(
        self, request: httpx.Request, options: Mapping[str, Any]
    ) -> tuple[CircuitBreaker | None, Retry | None, str]:
        """The breaker and the retry policy for this request; if no retry, why not."""
        origin = ""
        if self._by_origin:
            url = request.url
            key = _url_origin(url._uri_reference) if _PARSED_URLS else _public_origin(url)
            origin = self._origin_names.get(key) or self.origin_name(url)
        if options and options.get("breaker") is False:
            breaker = None
        elif self._registry is not None:
            breaker = self._registry.get(origin)
        else:
            breaker = self._shared_breaker
        if self.retry is None or (options and options.get("retry") is False):
            return breaker, None, "retries are off"
        method = request.method.upper()
        safe = (
            method in self.retry_methods
            or (options and options.get("retry") is True)
            or "idempotency-key" in request.headers
        )
        if not safe:
            if not self.idempotency_key or method not in ("POST", "PATCH"):
                return breaker, None, f"{method} is not idempotent"
            # One key per logical request: every attempt below sends the same one.
            request.headers["Idempotency-Key"] = str(uuid.uuid4())
        if not isinstance(request.stream, httpx.ByteStream) and not self.buffer_bodies:
            return (
                breaker,
                None,
                (
                    "the request body is a one-shot stream (a generator or file); "
                    "pass bytes, or set buffer_bodies=True to retry it"
                ),
            )
        default = self._default_retry
        if default is None:
            return breaker, self._call_retry, ""
        return breaker, default._origins.get(origin) or default.for_origin(origin), ""

    def hedge_for(
        self,
        request: httpx.Request,
        options: Mapping[str, Any],
        retry: Retry | None,
    ) -> Hedge | None:
        """The hedging policy for this request's origin, or None if it is not hedged.

        The retries' rule decides: an idempotent method (`retry_methods`),
        an `Idempotency-Key` header, or `{"hedge": True}` in the request's
        options; and a body in memory (or `buffer_bodies=True`).
        """
        hedge = self.hedge
        if hedge is None or (options and options.get("hedge") is False):
            return None
        if not (
            request.method.upper() in self.retry_methods
            or (options and options.get("hedge") is True)
            or "idempotency-key" in request.headers
        ):
            return None
        if not isinstance(request.stream, httpx.ByteStream) and not self.buffer_bodies:
            return None
        origin = self.origin_name(request.url)
        # Hedges spend the budget of the origin's retries when they have one.
        budget = None if retry is None else retry.budget
        key = (origin, budget)
        made = self._hedges.get(key)
        if made is not None:
            return made
        with self._limits_lock:
            made = self._hedges.get(key)
            if made is None:
                sibling = next((h for (o, _), h in self._hedges.items() if o == origin), None)
                made = hedge._for_origin(origin, budget)
                if sibling is not None:
                    made._latencies = sibling._latencies  # one origin, one latency window
                if not hedge.non_fatal:
                    made.non_fatal = ExceptionFilter(_transient, param="non_fatal")
                if hedge.non_fatal_result is None:
                    made.non_fatal_result = self.retryable_status
                while len(self._hedges) >= _MAX_ORIGINS:
                    self._hedges.popitem(last=False)
                self._hedges[key] = made
            return made

    def enter(
        self, options: Mapping[str, Any], clock: Clock
    ) -> tuple[Token[Deadline | None] | None, Deadline | None]:
        """Enter this request's total deadline; return its token and the deadline in force."""
        total = options.get("total_timeout", self.total_timeout) if options else self.total_timeout
        if total is None:
            return None, current_deadline()
        return enter_deadline(total, clock)

    def prepare(
        self, request: httpx.Request, options: Mapping[str, Any], deadline: Deadline | None
    ) -> httpx.Request:
        """The request one attempt sends: timeouts clamped, the deadline in a header.

        The caller's request is never changed: when anything differs, the
        attempt sends a shallow copy with its own headers and extensions.
        """
        limit = (
            options.get("attempt_timeout", self.attempt_timeout)
            if options
            else self.attempt_timeout
        )
        header = None
        if deadline is not None:
            left = deadline.expires_at - deadline.clock.monotonic()
            if left <= 0:
                raise HTTPDeadlineExceededError(
                    self.origin_name(request.url),
                    deadline.budget,
                    request=request,
                    before_call=True,
                )
            if limit is None or left < limit:
                limit = left
            if self.send_deadline_header:
                header = b"%d" % (left * 1000)
        timeouts = None
        if limit is not None:
            given = request.extensions.get("timeout")
            if given is None or not _within(given, limit):
                timeouts = dict.fromkeys(_TIMEOUT_KEYS, limit)
                if given:
                    for key in _TIMEOUT_KEYS:
                        value = given.get(key)
                        if value is not None and value < limit:
                            timeouts[key] = value
        if header is None and timeouts is None:
            return request
        sent = _shallow_copy(request)
        if timeouts is not None:
            sent.extensions = {**request.extensions, "timeout": timeouts}
        if header is not None:
            sent.headers = httpx.Headers(request.headers)
            _put_header(sent.headers, _DEADLINE_KEY, header)
        return sent

    def settle_by_status(
        self, permit: Permit, response: httpx.Response, in_memory: bool
    ) -> Permit | None:
        """Settle `permit` from a response's status, unless its body can still fail.

        A failure status settles as a failure; a success whose body is already
        in memory as a success. Otherwise the permit is returned, for the body
        stream to settle.
        """
        if self.failure_status(response.status_code):
            permit.record_failure()
        elif in_memory:
            permit.record_success()  # the body is in memory: nothing left to fail
        else:
            return permit
        return None

    def abandon_open(self) -> None:
        """The transport is closing: release (IGNORED) the permits of responses still open.

        Their bodies can no longer be read; an error reading them later is the
        closed pool's, not the server's, and is not recorded.
        """
        if _collected:
            _release_queued()
        open_ones: tuple[dict[int, Permit] | dict[int, LimitPermit], ...] = (
            self.open_permits,
            self.open_limit_permits,
        )
        for permits in open_ones:
            for key in list(permits):
                permit = permits.pop(key, None)
                if permit is not None:
                    permit.release()

    def report(
        self,
        response: httpx.Response,
        attempts: int,
        breaker: CircuitBreaker | None,
        elapsed: float,
    ) -> None:
        response.extensions["resilience"] = {
            "attempts": attempts,
            "breaker": None if breaker is None else breaker.name,
            "breaker_state": None if breaker is None else breaker.state._value_,
            "elapsed": elapsed,
        }


def _within(timeouts: Mapping[str, float | None], limit: float) -> bool:
    """Whether `timeouts` sets exactly httpx's four timeouts, each at most `limit`."""
    values = timeouts.values()
    if timeouts.keys() != _TIMEOUT_KEY_SET or None in values:
        return False
    return max(cast("Iterable[float]", values)) <= limit


def _shallow_copy(request: httpx.Request) -> httpx.Request:
    """A new Request sharing `request`'s method, URL, headers, stream and extensions.

    httpx's own way (`httpx.Request(..., stream=...)`, as its redirects do)
    costs three times more, so it is used only if this httpx's requests carry
    other attributes than those copied here (checked once, on a probe request).
    """
    if _PLAIN_REQUESTS:
        copied: httpx.Request = object.__new__(httpx.Request)
        copied.method = request.method
        copied.url = request.url
        copied.headers = request.headers
        copied.extensions = request.extensions
        copied.stream = request.stream
    else:
        copied = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
    # A body already read stays readable as .content; a stream not read yet
    # (or a one-shot one) is read from the shared stream when sent.
    content = getattr(request, "_content", None)
    if content is not None:
        copied._content = content
    return copied


def _httpx_requests_are_plain() -> bool:
    """Whether an httpx.Request holds only what `_shallow_copy` copies (and its read body)."""
    probe = httpx.Request("GET", "http://probe.invalid/")
    return set(vars(probe)) <= {"method", "url", "headers", "extensions", "stream", "_content"}


_PLAIN_REQUESTS = _httpx_requests_are_plain()


def _public_origin(url: httpx.URL) -> tuple[object, ...]:
    """(scheme, host, port) of `url` through httpx's public API (default ports are None)."""
    return (url.scheme, url.raw_host, url.port)


#: (scheme, host, port) of an httpx URL's parsed form (see `_httpx_urls_keep_parts`):
#: the same as `_public_origin` at a third of the cost (no credentials).
_url_origin = operator.itemgetter(0, 2, 3)


def _httpx_urls_keep_parts() -> bool:
    """Whether httpx.URL keeps (scheme, userinfo, host, port, ...) in `_uri_reference`."""
    for text in ("https://user:secret@Probe.invalid:8443/path", "http://probe.invalid:80/"):
        probe = httpx.URL(text)
        parts = getattr(probe, "_uri_reference", None)
        if not isinstance(parts, tuple) or len(parts) < 4:
            return False
        if _url_origin(parts) != (probe.scheme, probe.raw_host.decode("ascii"), probe.port):
            return False
    return True


_PARSED_URLS = _httpx_urls_keep_parts()


def _httpx_keeps_raw_header_triples() -> bool:
    """Whether httpx.Headers stores (raw key, lowercase key, value) triples in `_list`."""
    probe = httpx.Headers({"X-Probe": "1"})
    return getattr(probe, "_list", None) == [(b"X-Probe", b"x-probe", b"1")]


_RAW_HEADERS = _httpx_keeps_raw_header_triples()
_DEADLINE_KEY = DEADLINE_HEADER.encode("ascii")
_lowercase_key = operator.itemgetter(1)


def _put_header(headers: httpx.Headers, key: bytes, value: bytes) -> None:
    """`headers[key] = value` for a lowercase ASCII key.

    httpx's `Headers.__setitem__` walks the headers in Python on every call;
    a new header is appended to httpx's own list at C speed instead, when this
    httpx stores headers as checked by `_httpx_keeps_raw_header_triples`.
    """
    items = headers._list if _RAW_HEADERS else None
    if items is not None and key not in map(_lowercase_key, items):
        items.append((key, key, value))
    else:
        headers[key.decode("ascii")] = value.decode("ascii")


def _methods(value: object) -> frozenset[str]:
    """`retry_methods=`: a collection of HTTP method names (not one string)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Iterable):
        raise TypeError(
            f"retry_methods= takes a collection of method names such as {{'GET', 'PUT'}}, "
            f"got {value!r}"
        )
    methods = list(value)
    for method in methods:
        if not isinstance(method, str) or not method.strip():
            raise TypeError(f"retry_methods= takes method names (str), got {method!r}")
    return frozenset(method.upper() for method in methods)


def _statuses(value: object) -> Container[int]:
    """`retry_statuses=`: a collection of status codes, or any container of ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Container):
        raise TypeError(
            f"retry_statuses= takes a collection of status codes such as {{503, 429}}, "
            f"got {value!r}"
        )
    if isinstance(value, collections.abc.Iterable):
        for status in value:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise ValueError(f"retry_statuses= takes HTTP status codes 100-599, got {status!r}")
    return value


def _open_error(error: CircuitOpenError, request: httpx.Request) -> HTTPCircuitOpenError:
    return HTTPCircuitOpenError(error.name, error.state, error.retry_after, request=request)


def _settle_exception(permit: Permit | None, exc: BaseException) -> None:
    """An attempt or its body raised: settle as the breaker classifies it.

    The breaker's `record=` and `ignore=` decide, and its rules for
    resilience's own rejections (an inner breaker's `CircuitOpenError` is
    IGNORED); cancellation and interrupts are IGNORED, and so are the
    `NON_RETRYABLE_ERRORS`, which are the caller's.
    """
    if permit is None or permit.settled:
        return
    if isinstance(exc, NON_RETRYABLE_ERRORS):
        permit.release()
        return
    permit.record_exception(exc)


#: Permits of responses collected while their breaker's lock was held (see
#: `_release_collected`); the next request through a resilient transport releases them.
_collected: deque[Permit | LimitPermit] = deque()


def _release_collected(permit: Permit | LimitPermit) -> None:
    """Queue the permit of a response garbage-collected unclosed; never settle it here.

    This runs inside the garbage collector, in whichever thread happened to
    allocate, maybe one that holds this breaker's lock (a collection can start
    inside its `record`) or an observer's lock: settling can take the first
    and, through the events it publishes, the second, and would deadlock. The
    next request through a resilient transport (or closing one) releases it,
    before it asks its breaker for a permit.
    """
    _collected.append(permit)


def _release_queued() -> None:
    """Release the permits `_release_collected` had to queue (from an ordinary call)."""
    while _collected:
        try:
            permit = _collected.popleft()
        except IndexError:  # another thread took the last one
            return
        permit.release()


#: Where a watched stream without a permit looks for one: never filled.
_NO_PERMITS: dict[int, Permit] = {}
_NO_LIMIT_PERMITS: dict[int, LimitPermit] = {}


def _limit_error(
    error: ConcurrencyLimitExceededError, permit: Permit | None, request: httpx.Request
) -> HTTPConcurrencyLimitExceededError:
    """The error for a limit that refused an attempt; its breaker permit is released first.

    Nothing reached the origin: the breaker records nothing (IGNORED).
    """
    if permit is not None:
        permit.release()
    return HTTPConcurrencyLimitExceededError(error.name, error.limit, error.waited, request=request)


def _settle_limit(
    held: LimitPermit, exc: BaseException, cut: HTTPDeadlineExceededError | None
) -> None:
    """An attempt or its body raised `exc`: settle its limit permit.

    A deadline cut or a timeout is a drop; the `NON_RETRYABLE_ERRORS` (the
    caller's, or the client's own pool) say nothing; the rest as the limit
    classifies them (`ConcurrencyLimit.record_exception`: cancellation and
    errors other than timeouts and overload answers say nothing).
    """
    if held.settled:
        return
    if cut is not None:
        held.record_drop()
    elif isinstance(exc, NON_RETRYABLE_ERRORS):
        held.release()
    else:
        held.record_exception(exc)


def _limit_by_status(
    held: LimitPermit, response: httpx.Response, in_memory: bool
) -> LimitPermit | None:
    """Settle `held` from a response, unless its body is still to come (then return it).

    An overload answer (the limit's `drop_if`: 429, 503) is a drop at once;
    a body in memory ends the call (a sample, or whatever `drop_if` says);
    a streamed body settles when it ends.
    """
    if in_memory:
        held.record_result(response)
        return None
    drop_if = held._policy._drop_if
    if drop_if is not None:
        try:
            dropped = drop_if(response)
        except BaseException:
            held.release()
            raise
        if dropped:
            held.record_drop()
            return None
    return held


def _origin_name(url: httpx.URL) -> str:
    """`scheme://host:port`, the port spelled out (an IPv6 host in brackets)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    host = url.host
    return f"{url.scheme}://[{host}]:{port}" if ":" in host else f"{url.scheme}://{host}:{port}"


def _cut_by_deadline(
    exc: BaseException, deadline: Deadline | None, request: httpx.Request
) -> HTTPDeadlineExceededError | None:
    """The error to raise for an httpx timeout that fired because the deadline ran out.

    The attempt's httpx timeouts were clamped to the time left, so a timeout
    that fires as the deadline expires is the deadline's: None for anything
    else (an attempt timeout or a client timeout with time left).
    """
    if (
        deadline is None
        or not isinstance(exc, httpx.TimeoutException)
        or isinstance(exc, DeadlineExceededError)  # a nested resilient transport's
        or deadline.expires_at - deadline.clock.monotonic() > DEADLINE_SLACK
    ):
        return None
    return HTTPDeadlineExceededError(_origin_name(request.url), deadline.budget, request=request)


class _HoldsPermit:
    """The permit of a settling stream, settled by whichever way the body ends first.

    It is kept in the transport's `open_permits` until one of them pops it. A
    stream watched only for its deadline has no permit.
    """

    def __init__(
        self,
        permit: Permit | None,
        permits: dict[int, Permit],
        deadline: Deadline | None,
        request: httpx.Request,
        held: LimitPermit | None = None,
        limit_permits: dict[int, LimitPermit] = _NO_LIMIT_PERMITS,
    ) -> None:
        self._deadline = deadline
        self._request = request
        if permit is None:
            self._permits = _NO_PERMITS
        else:
            self._permits = permits
            permits[id(self)] = permit
        if held is None:
            self._limit_permits = _NO_LIMIT_PERMITS
        else:
            self._limit_permits = limit_permits
            limit_permits[id(self)] = held

    def _take(self) -> Permit | None:
        return self._permits.pop(id(self), None)

    def _take_limit(self) -> LimitPermit | None:
        return self._limit_permits.pop(id(self), None)

    def _failed(self, exc: BaseException) -> HTTPDeadlineExceededError | None:
        """Settle the permits for `exc`; return the error to raise if the deadline cut it."""
        cut = _cut_by_deadline(exc, self._deadline, self._request)
        if not isinstance(exc, GeneratorExit):
            _settle_exception(self._take(), exc)
            held = self._take_limit()
            if held is not None:
                _settle_limit(held, exc, cut)
        return cut

    def _closed(self) -> None:
        permit = self._take()
        if permit is not None:
            permit.record_success()
        held = self._take_limit()
        if held is not None:
            held.record_success()  # its latency: from admission to the end of the body

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # Collected without close(): hand the permit back (a half-open probe
        # slot would otherwise be held forever). Nothing at interpreter exit.
        if _finalizing():
            return
        try:
            permit = self._take()
            if permit is not None:
                _release_collected(permit)
            held = self._take_limit()
            if held is not None:
                _release_collected(held)
        except Exception:  # noqa: BLE001, S110  (nobody could catch it here)
            pass


class _SettlingStream(_HoldsPermit, httpx.SyncByteStream):
    """A response body that settles the breaker permit when it is closed.

    An error while the caller reads the body (a ReadTimeout mid-stream) is a
    failure; a body read or closed without error is a success; a response
    garbage-collected unclosed, or still open when the transport closes, is
    IGNORED. Once, whichever comes first, from any thread: the permit lives
    in the transport's `open_permits` until one of them pops it. An httpx
    timeout that fired because the deadline ran out is raised as
    `HTTPDeadlineExceededError`, with or without a permit.
    """

    def __init__(
        self,
        stream: httpx.SyncByteStream,
        permit: Permit | None,
        permits: dict[int, Permit],
        deadline: Deadline | None,
        request: httpx.Request,
        held: LimitPermit | None = None,
        limit_permits: dict[int, LimitPermit] = _NO_LIMIT_PERMITS,
    ) -> None:
        super().__init__(permit, permits, deadline, request, held, limit_permits)
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except BaseException as exc:
            cut = self._failed(exc)
            if cut is not None:
                raise cut from exc
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._closed()


class _AsyncSettlingStream(_HoldsPermit, httpx.AsyncByteStream):
    """The async twin of `_SettlingStream`."""

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        permit: Permit | None,
        permits: dict[int, Permit],
        deadline: Deadline | None,
        request: httpx.Request,
        held: LimitPermit | None = None,
        limit_permits: dict[int, LimitPermit] = _NO_LIMIT_PERMITS,
    ) -> None:
        super().__init__(permit, permits, deadline, request, held, limit_permits)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._stream.__aiter__()
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as exc:
            cut = self._failed(exc)
            if cut is not None:
                raise cut from exc
            raise
        finally:
            # Stopped early: close the inner async generator now, in this task
            # (left to the garbage collector, trio cannot finalize it).
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._closed()


class _BodyNotRead(Exception):
    """A body `_BoundedBody` stopped reading: too long, or past the deadline."""


def _check_bounds(read: int, limit: int, deadline: Deadline | None) -> None:
    if read > limit:
        raise _BodyNotRead(f"longer than max_drain_bytes ({limit} bytes)")
    if deadline is not None and deadline.expired:
        raise _BodyNotRead("the deadline ran out while reading it")


class _BoundedBody(httpx.SyncByteStream):
    """Read a body the caller did not ask to stream, within `limit` bytes and the deadline."""

    def __init__(self, stream: Any, limit: int, deadline: Deadline | None) -> None:
        self._stream, self._limit, self._deadline = stream, limit, deadline

    def __iter__(self) -> Iterator[bytes]:
        read = 0
        for chunk in self._stream:
            read += len(chunk)
            _check_bounds(read, self._limit, self._deadline)
            yield chunk

    def close(self) -> None:
        self._stream.close()


class _AsyncBoundedBody(httpx.AsyncByteStream):
    """The async twin of `_BoundedBody`."""

    def __init__(self, stream: Any, limit: int, deadline: Deadline | None) -> None:
        self._stream, self._limit, self._deadline = stream, limit, deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        chunks = self._stream.__aiter__()
        try:
            async for chunk in chunks:
                read += len(chunk)
                _check_bounds(read, self._limit, self._deadline)
                yield chunk
        finally:
            # Stopped early: close the inner async generator now, in this task
            # (left to the garbage collector, trio cannot finalize it).
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _DefaultRetry(Retry):
    """The transport's default retry policy; each origin runs its own copy of it.

    A copy is named after its origin (`scheme://host:port`), has a
    `RetryBudget` of that name, and publishes its events on this policy's
    `events` too. `metrics()` adds up the copies' counts; Prometheus reads
    each copy by its name, not this policy (it would count them twice). At
    most 1,000 origins keep a copy: past that the oldest copy is dropped
    (its counts stay in `metrics()`).
    """

    def __init__(self, status_rule: Callable[[httpx.Response], bool], clock: Clock) -> None:
        self._config: dict[str, Any] = {
            "on": _transient,
            "attempts": 4,
            "wait": Backoff(initial=0.2, maximum=5.0),
            "retry_if_result": status_rule,
            "max_retry_after": 30.0,
            "clock": clock,
        }
        super().__init__(**self._config, name="http")
        untrack("retry", self)
        self._origins: dict[str, Retry] = {}
        self._dropped: dict[str, int] = dict.fromkeys(super().metrics(), 0)
        self._lock = threading.Lock()

    def for_origin(self, origin: str) -> Retry:
        """The copy that retries the requests to `origin`, created on first use."""
        retry = self._origins.get(origin)
        if retry is not None:
            return retry
        with self._lock:
            retry = self._origins.get(origin)
            if retry is None:
                budget = RetryBudget(origin, clock=self.clock)
                retry = Retry(**self._config, budget=budget, name=origin)
                retry.events = ObserverHub(parent=self.events)
                while len(self._origins) >= _MAX_ORIGINS:
                    dropped = self._origins.pop(next(iter(self._origins)))
                    for key, value in dropped.metrics().items():
                        self._dropped[key] += value
                self._origins[origin] = retry
            return retry

    def metrics(self) -> dict[str, int]:
        """Calls by outcome and retries, added up over every origin's copy."""
        totals = super().metrics()
        with self._lock:
            copies = list(self._origins.values())
            for key, value in self._dropped.items():
                totals[key] += value
        for retry in copies:
            for key, value in retry.metrics().items():
                totals[key] += value
        return totals


def _with_result_rule(retry: Retry, rule: Callable[[httpx.Response], bool]) -> Retry:
    """`retry` as this transport runs it: a copy that also retries on `rule`.

    A shallow copy: it shares the original's counters, events, budget and
    clock, so its metrics and observers see the transport's calls; the
    original, which may serve other callers too, is not changed.
    """
    effective = copy.copy(retry)
    effective.retry_if_result = rule
    return effective


def _inner_transport(
    transport: Any,
    httpx_options: dict[str, Any],
    base: type,
    default: Callable[..., Any],
    other: tuple[type, str],
) -> Any:
    """The inner transport: `transport`, or one built from the httpx arguments.

    `other` is the base class of the other kind of transport (async for a
    sync one) and the resilient transport that wraps that kind.
    """
    if transport is None:
        return default(**httpx_options)
    given = sorted(
        name for name, value in httpx_options.items() if not _is_httpx_default(name, value)
    )
    if given:
        raise _not_both(default, given)
    if not isinstance(transport, base):
        other_base, wrapper = other
        if isinstance(transport, other_base):
            raise TypeError(
                f"transport= must be an httpx.{base.__name__}, got {transport!r}, an "
                f"httpx.{other_base.__name__}: use resilience.{wrapper} to wrap it"
            )
        raise TypeError(f"transport= must be an httpx.{base.__name__}, got {transport!r}")
    return transport


def _is_httpx_default(name: str, value: object) -> bool:
    default = _HTTPX_DEFAULTS[name]
    return value is default or (type(value) is type(default) and value == default)


def _not_both(default: Callable[..., Any], given: Iterable[str]) -> TypeError:
    return TypeError(
        f"pass either transport= or {default.__name__} arguments, not both: {sorted(given)}"
    )


@functools.cache
def _option_names(init: Callable[..., object]) -> tuple[str, ...] | None:
    """The keyword arguments `init` takes, in order; None if it takes any (**kwargs)."""
    names = []
    for parameter in list(inspect.signature(init).parameters.values())[1:]:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.append(parameter.name)
    return tuple(names)


def _unknown_options(owner: str, unknown: list[str], names: tuple[str, ...]) -> TypeError:
    """What a misspelled option gets: the closest valid name, and every valid one."""
    spelled = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        spelled.append(f"{name}= (did you mean {close[0]}=?)" if close else f"{name}=")
    return TypeError(
        f"{owner}() got an unknown option{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(spelled)}; valid options: {', '.join(name + '=' for name in names)}"
    )


def _wrong_client(transport: object) -> TypeError:
    """The error for a resilient transport given to the other kind of httpx client."""
    if isinstance(transport, ResilientTransport):
        return TypeError(
            "ResilientTransport is synchronous, for httpx.Client: with httpx.AsyncClient "
            "use resilience.AsyncResilientTransport"
        )
    return TypeError(
        "AsyncResilientTransport is asynchronous, for httpx.AsyncClient: with httpx.Client "
        "use resilience.ResilientTransport"
    )


class _Configured:
    """What both transports expose of their configuration."""

    _pipeline: _Pipeline

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """Check the option names before `__init__` does, to name the valid ones.

        Python's own error for an unexpected keyword names only the wrong one.
        Type checkers take the signature from `__init__`.
        """
        if "hedge" in kwargs and issubclass(cls, httpx.BaseTransport):
            raise MisuseError(
                "ResilientTransport does not hedge: a hedge runs attempts concurrently and "
                "cancels the losers, and a blocking httpx request in a thread cannot be "
                "cancelled (its connection would be held until it ends). Use "
                "resilience.AsyncResilientTransport(hedge=...) with httpx.AsyncClient."
            )
        names = _option_names(cls.__init__)
        if names is not None:
            unknown = [name for name in kwargs if name not in names]
            if unknown:
                raise _unknown_options(cls.__name__, unknown, names)
            transport = kwargs.get("transport", args[0] if args else None)
            given = [name for name in kwargs if name in _HTTPX_DEFAULTS and name in names]
            if transport is not None and given:
                sync = issubclass(cls, httpx.BaseTransport)
                raise _not_both(httpx.HTTPTransport if sync else httpx.AsyncHTTPTransport, given)
        return super().__new__(cls)

    @property
    def breakers(self) -> CircuitBreaker | BreakerRegistry | None:
        """The breaker or registry in use (for metrics and manual control)."""
        return self._pipeline.breakers

    @property
    def concurrency_limits(self) -> ConcurrencyLimit | Mapping[str, ConcurrencyLimit] | None:
        """The shared `ConcurrencyLimit`, the per-origin limits by origin (a snapshot), or None."""
        return self._pipeline.concurrency_limits

    @property
    def retry(self) -> Retry | None:
        """The retry policy: the `Retry` you passed, the default one, or None (`retry=False`).

        The default policy runs as one copy per origin, named after it with a
        budget of its own; its `events` carry every copy's events and its
        `metrics()` add up theirs.
        """
        return self._pipeline.retry


class ResilientTransport(_Configured, httpx.BaseTransport):
    """An httpx transport that adds deadlines, budgeted retries and per-origin breakers.

    ```python
    client = httpx.Client(transport=resilience.ResilientTransport())
    client = httpx.Client(transport=resilience.ResilientTransport(verify=ctx, http2=True))
    ```

    `httpx.Client(transport=...)` ignores the client's `verify`, `cert`,
    `http2`, `limits`, `trust_env` and environment proxies: pass them here
    (they build the inner `httpx.HTTPTransport`), or pass `transport=`.
    Every option is keyword-only; a misspelled one is a `TypeError` that
    suggests the closest valid name and lists them all.

    Args:
        transport: The inner transport. Default: an `httpx.HTTPTransport`
            built from the httpx arguments below (`verify` to
            `socket_options`); passing both is a `TypeError`.
        total_timeout: Seconds for the whole request, retries included; None
            for no total (an enclosing `resilience.deadline` still applies).
        attempt_timeout: Seconds per attempt, at most `total_timeout`. When
            not given: 10, or the total timeout if that is shorter.
        retry: True for the default retry (one per origin), a
            `resilience.Retry` of yours, or False for none. A `Retry` without
            `retry_if_result` also retries the `retry_statuses` here; it is
            not changed.
        breaker: True for the default breakers (a `BreakerRegistry`, one
            breaker per `scheme://host:port`), a `CircuitBreaker` for every
            origin, a `BreakerRegistry` of yours, or False for none.
        concurrency_limit: An adaptive concurrency limit for each attempt
            (off by default): True for one `ConcurrencyLimit(AIMDLimit())`
            per `scheme://host:port`, named after it; a callable(origin)
            that makes each origin's limit; or one `ConcurrencyLimit` for
            every origin. A full limit raises `HTTPConcurrencyLimitExceededError`.
        retry_methods: Methods retried (default: the idempotent ones).
        retry_statuses: Response statuses retried, by the default retry and
            by a `Retry` of yours that has no `retry_if_result`.
        failure_status: Which statuses the breaker counts as failures
            (default: 5xx and 429).
        idempotency_key: Give POST/PATCH an `Idempotency-Key` (one per
            logical request, the same on every attempt) and retry them.
        buffer_bodies: Read one-shot request bodies into memory so that they
            can be retried (otherwise such requests are not retried).
        max_drain_bytes: A failed response is read up to this many bytes
            before a retry, so its connection is reused; a longer one is closed.
        send_deadline_header: Send the time left as `x-resilience-deadline-ms`.
        half_open_max_wait: For the default breakers: reopen when a half-open
            probe has not reported after this many seconds. `...` (the
            default): the total timeout, else the attempt timeout, else 30;
            None waits forever.
        clock: A `resilience.Clock` for the deadline and the timings, also
            given to the default breakers, retries and budgets (a
            `resilience.testing.FakeClock` drives them in tests). Default:
            your `breaker=`'s clock, else the system clock.
        verify: `httpx.HTTPTransport`: an `ssl.SSLContext`, or False to skip
            certificate checks (a CA bundle path is deprecated by httpx).
        cert: `httpx.HTTPTransport`: a client certificate (deprecated by
            httpx: load it into `verify`'s `ssl.SSLContext`).
        trust_env: `httpx.HTTPTransport`: read `SSL_CERT_FILE` and
            `SSL_CERT_DIR` (environment proxies are the client's: pass `proxy=`).
        http1: `httpx.HTTPTransport`: allow HTTP/1.1.
        http2: `httpx.HTTPTransport`: allow HTTP/2 (needs `httpx[http2]`).
        limits: `httpx.HTTPTransport`: the connection pool's limits.
        proxy: `httpx.HTTPTransport`: the proxy every request goes through.
        uds: `httpx.HTTPTransport`: connect through this Unix domain socket.
        local_address: `httpx.HTTPTransport`: the local IP address to bind to.
        retries: `httpx.HTTPTransport`: retries of a failed connection
            attempt, below this transport's retries.
        socket_options: `httpx.HTTPTransport`: options set on each socket.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        total_timeout: float | None = 30.0,
        attempt_timeout: float | None = 10.0,
        retry: Retry | bool = True,
        breaker: CircuitBreaker | BreakerRegistry | bool = True,
        concurrency_limit: ConcurrencyLimit | Callable[[str], ConcurrencyLimit] | bool = False,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        retry_statuses: Container[int] = RETRY_STATUSES,
        failure_status: Callable[[int], bool] = default_failure_status,
        idempotency_key: bool = False,
        buffer_bodies: bool = False,
        max_drain_bytes: int = 65_536,
        send_deadline_header: bool = True,
        half_open_max_wait: float | EllipsisType | None = ...,
        clock: Clock | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
        proxy: httpx.URL | str | httpx.Proxy | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Iterable[
            tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
        ]
        | None = None,
    ) -> None:
        self._pipeline = _Pipeline(
            total_timeout=total_timeout,
            attempt_timeout=attempt_timeout,
            retry=retry,
            breaker=breaker,
            concurrency_limit=concurrency_limit,
            retry_methods=retry_methods,
            retry_statuses=retry_statuses,
            failure_status=failure_status,
            idempotency_key=idempotency_key,
            buffer_bodies=buffer_bodies,
            max_drain_bytes=max_drain_bytes,
            send_deadline_header=send_deadline_header,
            half_open_max_wait=half_open_max_wait,
            clock=clock,
        )
        self._inner: httpx.BaseTransport = _inner_transport(
            transport,
            {
                "verify": verify,
                "cert": cert,
                "trust_env": trust_env,
                "http1": http1,
                "http2": http2,
                "limits": limits,
                "proxy": proxy,
                "uds": uds,
                "local_address": local_address,
                "retries": retries,
                "socket_options": socket_options,
            },
            httpx.BaseTransport,
            httpx.HTTPTransport,
            (httpx.AsyncBaseTransport, "AsyncResilientTransport"),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through deadline, retry, breaker and attempt timeout."""
        if _collected:
            _release_queued()
        pipeline = self._pipeline
        options = pipeline.options(request)
        breaker, retry, not_retried = pipeline.route(request, options)
        limit = pipeline.limit_for(request, options) if pipeline.limited else None
        if retry is not None and not isinstance(request.stream, httpx.ByteStream):
            request.read()  # buffer_bodies=True: make the body replayable
        clock = pipeline.clock
        if clock is None:
            clock = SYSTEM_CLOCK if breaker is None else breaker.clock
        started = clock.monotonic()
        attempts = 0
        last: httpx.Response | None = None

        def attempt() -> httpx.Response:
            nonlocal attempts, last
            if last is not None and not last.is_closed:
                self._discard(last)  # a discard_result= of the caller's left it open
            attempts += 1
            last = self._attempt(
                pipeline.prepare(request, options, deadline), breaker, deadline, request, limit
            )
            return last

        token, deadline = pipeline.enter(options, clock)
        # A failed response that will be retried is drained or closed before
        # the wait, so it never holds its pooled connection through a backoff.
        discarding = None if retry is None else _discard_for_this_call.set(self._discard)
        try:
            response = retry.call(attempt) if retry is not None else attempt()
        except BaseException as exc:
            if last is not None and not last.is_closed:
                # Not returned: retries ran out (RetryExhaustedError), a hook or
                # predicate raised, or an interrupt. Its connection goes back.
                self._give_back(last, exc, attempts, breaker, clock.monotonic() - started)
            if not_retried and pipeline.retry is not None and isinstance(exc, Exception):
                exc.add_note(f"resilience: not retried: {not_retried}")
            raise
        finally:
            if discarding is not None:
                _discard_for_this_call.reset(discarding)
            if token is not None:
                leave_deadline(token)
        pipeline.report(response, attempts, breaker, clock.monotonic() - started)
        return response

    def _attempt(
        self,
        sent: httpx.Request,
        breaker: CircuitBreaker | None,
        deadline: Deadline | None,
        request: httpx.Request,
        limit: ConcurrencyLimit | None = None,
    ) -> httpx.Response:
        """One attempt: `sent` (the copy of `request` prepared for it) under its permit."""
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except CircuitOpenError as error:
                raise _open_error(error, request) from None
        held = None
        if limit is not None:  # inside the breaker: a rejection here is not the origin's
            try:
                held = limit.acquire()
            except ConcurrencyLimitExceededError as error:
                raise _limit_error(error, permit, request) from None
            except BaseException:  # cancelled while waiting for a slot, or misuse
                if permit is not None:
                    permit.release()
                raise
        try:
            response = self._inner.handle_request(sent)
        except BaseException as exc:
            _settle_exception(permit, exc)
            cut = _cut_by_deadline(exc, deadline, request)
            if held is not None:
                _settle_limit(held, exc, cut)
            if cut is not None:
                raise cut from exc
            raise
        if permit is None and deadline is None and held is None:
            return response
        pipeline = self._pipeline
        in_memory = response.is_closed or isinstance(response.stream, httpx.ByteStream)
        if permit is not None or held is not None:
            try:
                if permit is not None:
                    permit = pipeline.settle_by_status(permit, response, in_memory)
                if held is not None:
                    held = _limit_by_status(held, response, in_memory)
            except BaseException:  # a failure_status= or drop_if= that raised
                if permit is not None and not permit.settled:
                    permit.release()
                if held is not None and not held.settled:
                    held.release()
                with contextlib.suppress(Exception):  # the predicate's error is the one to raise
                    response.close()
                raise
        if not in_memory:
            response.stream = _SettlingStream(
                response.stream,  # type: ignore[arg-type]
                permit,
                pipeline.open_permits,
                deadline,
                request,
                held,
                pipeline.open_limit_permits,
            )
        return response

    def _discard(self, response: httpx.Response) -> None:
        """Read a failed response (bounded) or close it, so the pool gets its connection back."""
        try:
            length = int(response.headers.get("content-length", "-1"))
            if 0 <= length <= self._pipeline.max_drain_bytes:
                response.read()
        except Exception:  # noqa: BLE001, S110  (a broken body is closed below anyway)
            pass
        finally:
            response.close()

    def _give_back(
        self,
        response: httpx.Response,
        exc: BaseException,
        attempts: int,
        breaker: CircuitBreaker | None,
        elapsed: float,
    ) -> None:
        """Close a response the caller never gets; read it first if an error carries it."""
        try:
            if isinstance(exc, RetryExhaustedError) and exc.last_result is response:
                self._pipeline.report(response, attempts, breaker, elapsed)
                response.stream = _BoundedBody(
                    response.stream, self._pipeline.max_drain_bytes, current_deadline()
                )
                try:
                    response.read()  # error.last_result.content keeps working
                except Exception as error:  # noqa: BLE001
                    exc.add_note(f"resilience: the last response's body was not read: {error}")
            elif isinstance(exc, Exception):
                self._discard(response)
        except Exception:  # noqa: BLE001, S110  (the call's own error is the one to raise)
            pass
        finally:
            with contextlib.suppress(Exception):
                response.close()

    def close(self) -> None:
        """Close the inner transport; responses still open settle their permits as IGNORED."""
        self._pipeline.abandon_open()
        self._inner.close()

    def __enter__(self) -> Self:
        self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._pipeline.abandon_open()
        self._inner.__exit__(exc_type, exc, traceback)

    # -- given to httpx.AsyncClient by mistake: say what to use ----------------------

    async def handle_async_request(self, request: httpx.Request) -> NoReturn:
        """Refuse: this transport is synchronous (use `AsyncResilientTransport`)."""
        raise _wrong_client(self)

    async def aclose(self) -> NoReturn:
        """Refuse: this transport is synchronous (use `AsyncResilientTransport`)."""
        raise _wrong_client(self)

    async def __aenter__(self) -> NoReturn:
        raise _wrong_client(self)

    async def __aexit__(self, *exc_info: object) -> NoReturn:
        raise _wrong_client(self)


class AsyncResilientTransport(_Configured, httpx.AsyncBaseTransport):
    """The async twin of `ResilientTransport`, for `httpx.AsyncClient`.

    The same options; the httpx arguments build an `httpx.AsyncHTTPTransport`.
    Works on asyncio and trio.

    Args:
        transport: The inner transport. Default: an `httpx.AsyncHTTPTransport`
            built from the httpx arguments below (`verify` to
            `socket_options`); passing both is a `TypeError`.
        total_timeout: Seconds for the whole request, retries included; None
            for no total (an enclosing `resilience.deadline` still applies).
        attempt_timeout: Seconds per attempt, at most `total_timeout`. When
            not given: 10, or the total timeout if that is shorter.
        retry: True for the default retry (one per origin), a
            `resilience.Retry` of yours, or False for none. A `Retry` without
            `retry_if_result` also retries the `retry_statuses` here; it is
            not changed.
        breaker: True for the default breakers (a `BreakerRegistry`, one
            breaker per `scheme://host:port`), a `CircuitBreaker` for every
            origin, a `BreakerRegistry` of yours, or False for none.
        concurrency_limit: An adaptive concurrency limit for each attempt
            (off by default): True for one `ConcurrencyLimit(AIMDLimit())`
            per `scheme://host:port`, named after it; a callable(origin)
            that makes each origin's limit; or one `ConcurrencyLimit` for
            every origin. A full limit raises `HTTPConcurrencyLimitExceededError`.
        hedge: A `resilience.Hedge`: a slow attempt gets extra ones, and the
            first good response wins (off by default). Only requests that may
            be retried are hedged (`retry_methods`, an `Idempotency-Key`);
            each origin keeps its own latencies, and hedges spend the
            origin's retry budget when there is one. Each hedge is an
            attempt: its own breaker permit and limit slot. Losers are
            cancelled (their connections closed) before the response is
            returned. Unless the `Hedge` says otherwise, transport errors
            and `retry_statuses` are non-fatal (the next hedge goes at once).
        retry_methods: Methods retried (default: the idempotent ones).
        retry_statuses: Response statuses retried, by the default retry and
            by a `Retry` of yours that has no `retry_if_result`.
        failure_status: Which statuses the breaker counts as failures
            (default: 5xx and 429).
        idempotency_key: Give POST/PATCH an `Idempotency-Key` (one per
            logical request, the same on every attempt) and retry them.
        buffer_bodies: Read one-shot request bodies into memory so that they
            can be retried (otherwise such requests are not retried).
        max_drain_bytes: A failed response is read up to this many bytes
            before a retry, so its connection is reused; a longer one is closed.
        send_deadline_header: Send the time left as `x-resilience-deadline-ms`.
        half_open_max_wait: For the default breakers: reopen when a half-open
            probe has not reported after this many seconds. `...` (the
            default): the total timeout, else the attempt timeout, else 30;
            None waits forever.
        clock: A `resilience.Clock` for the deadline and the timings, also
            given to the default breakers, retries and budgets (a
            `resilience.testing.FakeClock` drives them in tests). Default:
            your `breaker=`'s clock, else the system clock.
        verify: `httpx.AsyncHTTPTransport`: an `ssl.SSLContext`, or False to
            skip certificate checks (a CA bundle path is deprecated by httpx).
        cert: `httpx.AsyncHTTPTransport`: a client certificate (deprecated by
            httpx: load it into `verify`'s `ssl.SSLContext`).
        trust_env: `httpx.AsyncHTTPTransport`: read `SSL_CERT_FILE` and
            `SSL_CERT_DIR` (environment proxies are the client's: pass `proxy=`).
        http1: `httpx.AsyncHTTPTransport`: allow HTTP/1.1.
        http2: `httpx.AsyncHTTPTransport`: allow HTTP/2 (needs `httpx[http2]`).
        limits: `httpx.AsyncHTTPTransport`: the connection pool's limits.
        proxy: `httpx.AsyncHTTPTransport`: the proxy every request goes through.
        uds: `httpx.AsyncHTTPTransport`: connect through this Unix domain socket.
        local_address: `httpx.AsyncHTTPTransport`: the local IP address to bind to.
        retries: `httpx.AsyncHTTPTransport`: retries of a failed connection
            attempt, below this transport's retries.
        socket_options: `httpx.AsyncHTTPTransport`: options set on each socket.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        total_timeout: float | None = 30.0,
        attempt_timeout: float | None = 10.0,
        retry: Retry | bool = True,
        breaker: CircuitBreaker | BreakerRegistry | bool = True,
        concurrency_limit: ConcurrencyLimit | Callable[[str], ConcurrencyLimit] | bool = False,
        hedge: Hedge | None = None,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        retry_statuses: Container[int] = RETRY_STATUSES,
        failure_status: Callable[[int], bool] = default_failure_status,
        idempotency_key: bool = False,
        buffer_bodies: bool = False,
        max_drain_bytes: int = 65_536,
        send_deadline_header: bool = True,
        half_open_max_wait: float | EllipsisType | None = ...,
        clock: Clock | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
        proxy: httpx.URL | str | httpx.Proxy | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Iterable[
            tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
        ]
        | None = None,
    ) -> None:
        self._pipeline = _Pipeline(
            total_timeout=total_timeout,
            attempt_timeout=attempt_timeout,
            retry=retry,
            breaker=breaker,
            concurrency_limit=concurrency_limit,
            retry_methods=retry_methods,
            retry_statuses=retry_statuses,
            failure_status=failure_status,
            idempotency_key=idempotency_key,
            buffer_bodies=buffer_bodies,
            max_drain_bytes=max_drain_bytes,
            send_deadline_header=send_deadline_header,
            half_open_max_wait=half_open_max_wait,
            clock=clock,
            hedge=hedge,
        )
        self._inner: httpx.AsyncBaseTransport = _inner_transport(
            transport,
            {
                "verify": verify,
                "cert": cert,
                "trust_env": trust_env,
                "http1": http1,
                "http2": http2,
                "limits": limits,
                "proxy": proxy,
                "uds": uds,
                "local_address": local_address,
                "retries": retries,
                "socket_options": socket_options,
            },
            httpx.AsyncBaseTransport,
            httpx.AsyncHTTPTransport,
            (httpx.BaseTransport, "ResilientTransport"),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through deadline, retry, breaker and attempt timeout."""
        if _collected:
            _release_queued()
        pipeline = self._pipeline
        options = pipeline.options(request)
        breaker, retry, not_retried = pipeline.route(request, options)
        limit = pipeline.limit_for(request, options) if pipeline.limited else None
        hedge = None if pipeline.hedge is None else pipeline.hedge_for(request, options, retry)
        if (retry is not None or hedge is not None) and not isinstance(
            request.stream, httpx.ByteStream
        ):
            await request.aread()  # buffer_bodies=True: make the body replayable
        clock = pipeline.clock
        if clock is None:
            clock = SYSTEM_CLOCK if breaker is None else breaker.clock
        started = clock.monotonic()
        attempts = 0
        last: httpx.Response | None = None

        async def attempt() -> httpx.Response:
            nonlocal attempts, last
            if last is not None and not last.is_closed:
                await self._discard(last)  # a discard_result= of the caller's left it open
            attempts += 1
            last = await self._attempt(
                pipeline.prepare(request, options, deadline), breaker, deadline, request, limit
            )
            return last

        if hedge is not None:

            async def one() -> httpx.Response:
                nonlocal attempts
                attempts += 1
                return await self._attempt(
                    pipeline.prepare(request, options, deadline), breaker, deadline, request, limit
                )

            async def attempt() -> httpx.Response:
                nonlocal last
                if last is not None and not last.is_closed:
                    await self._discard(last)
                # The losers' responses are closed by the hedge before it returns.
                last = await hedge.acall(one)
                return last

        token, deadline = pipeline.enter(options, clock)
        discarding = (
            None
            if retry is None and hedge is None
            else _discard_for_this_call.set(self._discard)  # the responses nobody will read
        )
        try:
            response = await (retry.acall(attempt) if retry is not None else attempt())
        except BaseException as exc:
            if last is not None and not last.is_closed:
                await self._give_back(last, exc, attempts, breaker, clock.monotonic() - started)
            if not_retried and pipeline.retry is not None and isinstance(exc, Exception):
                exc.add_note(f"resilience: not retried: {not_retried}")
            raise
        finally:
            if discarding is not None:
                _discard_for_this_call.reset(discarding)
            if token is not None:
                leave_deadline(token)
        pipeline.report(response, attempts, breaker, clock.monotonic() - started)
        return response

    async def _attempt(
        self,
        sent: httpx.Request,
        breaker: CircuitBreaker | None,
        deadline: Deadline | None,
        request: httpx.Request,
        limit: ConcurrencyLimit | None = None,
    ) -> httpx.Response:
        """The async twin of `ResilientTransport._attempt`."""
        permit = None
        if breaker is not None:
            try:
                permit = await breaker.aacquire()
            except CircuitOpenError as error:
                raise _open_error(error, request) from None
        held = None
        if limit is not None:  # inside the breaker: a rejection here is not the origin's
            try:
                held = await limit.aacquire()
            except ConcurrencyLimitExceededError as error:
                raise _limit_error(error, permit, request) from None
            except BaseException:  # cancelled while waiting for a slot, or misuse
                if permit is not None:
                    permit.release()
                raise
        try:
            response = await self._inner.handle_async_request(sent)
        except BaseException as exc:
            _settle_exception(permit, exc)
            cut = _cut_by_deadline(exc, deadline, request)
            if held is not None:
                _settle_limit(held, exc, cut)
            if cut is not None:
                raise cut from exc
            raise
        if permit is None and deadline is None and held is None:
            return response
        pipeline = self._pipeline
        in_memory = response.is_closed or isinstance(response.stream, httpx.ByteStream)
        if permit is not None or held is not None:
            try:
                if permit is not None:
                    permit = pipeline.settle_by_status(permit, response, in_memory)
                if held is not None:
                    held = _limit_by_status(held, response, in_memory)
            except BaseException:  # a failure_status= or drop_if= that raised
                if permit is not None and not permit.settled:
                    permit.release()
                if held is not None and not held.settled:
                    held.release()
                with contextlib.suppress(Exception):  # the predicate's error is the one to raise
                    await response.aclose()
                raise
        if not in_memory:
            response.stream = _AsyncSettlingStream(
                response.stream,  # type: ignore[arg-type]
                permit,
                pipeline.open_permits,
                deadline,
                request,
                held,
                pipeline.open_limit_permits,
            )
        return response

    async def _discard(self, response: httpx.Response) -> None:
        try:
            length = int(response.headers.get("content-length", "-1"))
            if 0 <= length <= self._pipeline.max_drain_bytes:
                await response.aread()
        except Exception:  # noqa: BLE001, S110  (a broken body is closed below anyway)
            pass
        finally:
            await response.aclose()

    async def _give_back(
        self,
        response: httpx.Response,
        exc: BaseException,
        attempts: int,
        breaker: CircuitBreaker | None,
        elapsed: float,
    ) -> None:
        """The async twin of `ResilientTransport._give_back`."""
        try:
            if isinstance(exc, RetryExhaustedError) and exc.last_result is response:
                self._pipeline.report(response, attempts, breaker, elapsed)
                response.stream = _AsyncBoundedBody(
                    response.stream, self._pipeline.max_drain_bytes, current_deadline()
                )
                try:
                    await response.aread()
                except Exception as error:  # noqa: BLE001
                    exc.add_note(f"resilience: the last response's body was not read: {error}")
            elif isinstance(exc, Exception):
                await self._discard(response)
        except Exception:  # noqa: BLE001, S110  (the call's own error is the one to raise)
            pass
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()  # httpcore shields its part from cancellation

    async def aclose(self) -> None:
        """Close the inner transport; responses still open settle their permits as IGNORED."""
        self._pipeline.abandon_open()
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._pipeline.abandon_open()
        await self._inner.__aexit__(exc_type, exc, traceback)

    # -- given to httpx.Client by mistake: say what to use ---------------------------

    def handle_request(self, request: httpx.Request) -> NoReturn:
        """Refuse: this transport is asynchronous (use `ResilientTransport`)."""
        raise _wrong_client(self)

    def close(self) -> NoReturn:
        """Refuse: this transport is asynchronous (use `ResilientTransport`)."""
        raise _wrong_client(self)

    def __enter__(self) -> NoReturn:
        raise _wrong_client(self)

    def __exit__(self, *exc_info: object) -> NoReturn:
        raise _wrong_client(self)


def _mark_default(init: Callable[..., None], name: str, marker: _Default) -> None:
    """Make `init`'s default for `name` the `marker` (same value), to tell it apart.

    The signature keeps the plain number, for type checkers, IDEs and the API
    reference; at run time the default is the marker, so `_Pipeline` sees
    whether `attempt_timeout` was given.
    """
    defaults = cast("FunctionType", init).__kwdefaults__
    if defaults is None or defaults.get(name) != marker:
        raise RuntimeError(f"{init.__qualname__}: the default of {name}= is not {marker!r}")
    defaults[name] = marker


_mark_default(ResilientTransport.__init__, "attempt_timeout", _ATTEMPT_TIMEOUT)
_mark_default(AsyncResilientTransport.__init__, "attempt_timeout", _ATTEMPT_TIMEOUT)
