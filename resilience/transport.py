"""Resilient outbound HTTP for httpx: `httpx.Client(transport=ResilientTransport())`.

Every request goes through: total deadline -> retry (with a budget) ->
circuit breaker per origin -> attempt timeout -> the inner transport
(DESIGN section 10). The inner transport is an `httpx.HTTPTransport` built
from this transport's keyword arguments, or one you pass.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any, Self

import httpx

from ._backoff import Backoff
from ._budget import RetryBudget
from ._clock import SYSTEM_CLOCK, Clock
from ._deadline import DEADLINE_HEADER, enter_deadline, leave_deadline, remaining
from ._retry import Retry, _discard_for_this_call
from ._validate import check_int, check_seconds
from .breaker import BreakerRegistry, CircuitBreaker, Permit, TimeWindow
from .errors import CircuitOpenError, DeadlineExceededError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Collection, Container, Iterator
    from types import TracebackType

    from ._state import State

__all__ = [
    "AsyncResilientTransport",
    "HTTPCircuitOpenError",
    "HTTPDeadlineExceededError",
    "ResilientTransport",
]

#: Methods retried by default: idempotent per RFC 9110 (as urllib3 and httpx-retries).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses retried by default (transient: Polly's standard handler and Envoy's 5xx + 429).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_OVERRIDES = frozenset({"retry", "breaker", "total_timeout", "attempt_timeout"})
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")


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


class HTTPDeadlineExceededError(DeadlineExceededError, httpx.TimeoutException):
    """No time was left for an attempt: a `DeadlineExceededError` and an httpx timeout."""

    def __init__(
        self,
        name: str | None = None,
        budget: float | None = None,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        DeadlineExceededError.__init__(self, name, budget)
        self._request = request


def _failure_status(status: int) -> bool:
    """Breaker failures by default: 5xx and 429; other 4xx are the caller's problem."""
    return status >= 500 or status == 429


class _Pipeline:
    """What the sync and async transports share: configuration and decisions."""

    def __init__(
        self,
        *,
        total_timeout: float | None,
        attempt_timeout: float | None,
        retry: Retry | bool | None,
        breaker: CircuitBreaker | BreakerRegistry | bool | None,
        retry_methods: Collection[str],
        retry_statuses: Container[int],
        failure_status: Callable[[int], bool],
        idempotency_key: bool,
        buffer_bodies: bool,
        max_drain_bytes: int,
        send_deadline_header: bool,
    ) -> None:
        self.total_timeout = (
            None if total_timeout is None else check_seconds(total_timeout, "total_timeout")
        )
        self.attempt_timeout = (
            None if attempt_timeout is None else check_seconds(attempt_timeout, "attempt_timeout")
        )
        if (
            self.total_timeout is not None
            and self.attempt_timeout is not None
            and self.attempt_timeout > self.total_timeout
        ):
            raise ValueError(
                f"attempt_timeout={attempt_timeout!r} exceeds total_timeout={total_timeout!r}: "
                f"an attempt could never use its full time"
            )
        if not callable(failure_status):
            raise TypeError(
                f"failure_status= must be callable(status) -> bool, got {failure_status!r}"
            )
        self.failure_status = failure_status
        self.retry_methods = frozenset(method.upper() for method in retry_methods)
        self.retry_statuses = retry_statuses
        self.idempotency_key = _flag(idempotency_key, "idempotency_key")
        self.buffer_bodies = _flag(buffer_bodies, "buffer_bodies")
        self.max_drain_bytes = check_int(max_drain_bytes, "max_drain_bytes", minimum=0)
        self.send_deadline_header = _flag(send_deadline_header, "send_deadline_header")
        self.retry = self._resolve_retry(retry)
        self.breakers = self._resolve_breaker(breaker)
        self._origin_names: dict[tuple[str, str, int | None], str] = {}

    def _resolve_retry(self, retry: Retry | bool | None) -> Retry | None:
        if retry is None or retry is True:
            # Polly's standard HTTP handler: 3 retries, exponential with jitter
            # (base 2 s there; 0.2 s here, for service-to-service calls), Retry-After honoured.
            return Retry(
                on=(httpx.TransportError,),
                attempts=4,
                wait=Backoff(initial=0.2, maximum=5.0),
                retry_if_result=lambda response: response.status_code in self.retry_statuses,
                budget=RetryBudget("http"),
                max_retry_after=30.0,
                name="http",
            )
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
                max_size=1000,
                failure_rate_threshold=0.1,
                minimum_calls=100,
                window=TimeWindow(seconds=window),
                open_duration=5.0,
            )
        if breaker is False:
            return None
        if not isinstance(breaker, (CircuitBreaker, BreakerRegistry)):
            raise TypeError(
                f"breaker= must be a CircuitBreaker, a BreakerRegistry, True or False, "
                f"got {breaker!r}"
            )
        return breaker

    # -- per request ---------------------------------------------------------------

    def options(self, request: httpx.Request) -> dict[str, Any]:
        """Per-request overrides from request.extensions["resilience"], validated."""
        overrides = request.extensions.get("resilience") or {}
        if not isinstance(overrides, dict):
            raise TypeError('request.extensions["resilience"] must be a dict')
        unknown = overrides.keys() - _OVERRIDES
        if unknown:
            raise ValueError(
                f'unknown keys in request.extensions["resilience"]: {sorted(unknown)}; '
                f"known: {sorted(_OVERRIDES)}"
            )
        return overrides

    def breaker_for(self, request: httpx.Request, options: dict[str, Any]) -> CircuitBreaker | None:
        if options.get("breaker", True) is False or self.breakers is None:
            return None
        if isinstance(self.breakers, CircuitBreaker):
            return self.breakers
        url = request.url
        origin = (url.scheme, url.host, url.port)
        name = self._origin_names.get(origin)
        if name is None:
            if len(self._origin_names) > 4096:  # bounded, like the registry
                self._origin_names.clear()
            port = url.port or (443 if url.scheme == "https" else 80)
            name = self._origin_names[origin] = f"{url.scheme}://{url.host}:{port}"
        return self.breakers.get(name)

    def retry_for(
        self, request: httpx.Request, options: dict[str, Any]
    ) -> tuple[Retry | None, str]:
        """The retry policy for this request, or None and why not."""
        if self.retry is None or options.get("retry", True) is False:
            return None, "retries are off"
        method = request.method.upper()
        safe = (
            method in self.retry_methods
            or options.get("retry") is True
            or "idempotency-key" in request.headers
        )
        if not safe:
            if not self.idempotency_key or method not in ("POST", "PATCH"):
                return None, f"{method} is not idempotent"
            # One key per logical request: every attempt below sends the same one.
            request.headers["Idempotency-Key"] = str(uuid.uuid4())
        if not isinstance(request.stream, httpx.ByteStream) and not self.buffer_bodies:
            return None, (
                "the request body is a one-shot stream (a generator or file); "
                "pass bytes, or set buffer_bodies=True to retry it"
            )
        return self.retry, ""

    def prepare(self, request: httpx.Request, options: dict[str, Any]) -> httpx.Request:
        """Clamp this attempt's timeouts to the attempt timeout and the deadline."""
        left = remaining()
        if left is not None and left <= 0:
            raise HTTPDeadlineExceededError("http", self.total_timeout, request=request)
        limit = options.get("attempt_timeout", self.attempt_timeout)
        if left is not None:
            limit = left if limit is None else min(limit, left)
        if limit is not None:
            # A new dict: the caller's timeout dict may be shared with other requests.
            given = request.extensions.get("timeout") or {}
            timeouts = {
                key: limit if (value := given.get(key)) is None else min(value, limit)
                for key in _TIMEOUT_KEYS
            }
            request.extensions = {**request.extensions, "timeout": timeouts}
        if self.send_deadline_header and left is not None:
            request.headers[DEADLINE_HEADER] = str(max(math.floor(left * 1000), 0))
        return request

    def total(self, options: dict[str, Any]) -> float | None:
        return options.get("total_timeout", self.total_timeout)

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
            "breaker_state": None if breaker is None else breaker.state.value,
            "elapsed": elapsed,
        }


def _clock_of(breaker: CircuitBreaker | None) -> Clock:
    return SYSTEM_CLOCK if breaker is None else breaker.clock


def _flag(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{param}= must be True or False, got {value!r}")
    return value


def _open_error(error: CircuitOpenError, request: httpx.Request) -> HTTPCircuitOpenError:
    return HTTPCircuitOpenError(error.name, error.state, error.retry_after, request=request)


def _settle_exception(permit: Permit | None, exc: BaseException) -> None:
    if permit is None or permit.settled:
        return
    if isinstance(exc, Exception):
        permit.record_failure()
    else:
        permit.release()


class _SettlingStream(httpx.SyncByteStream):
    """A response body that settles the breaker permit when it is closed.

    An error while the caller reads the body (a ReadTimeout mid-stream) is a
    failure; a body read or closed without error is a success. Once, either way.
    """

    def __init__(self, stream: httpx.SyncByteStream, permit: Permit) -> None:
        self._stream = stream
        self._permit = permit

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                _settle_exception(self._permit, exc)
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if not self._permit.settled:
                self._permit.record_success()


class _AsyncSettlingStream(httpx.AsyncByteStream):
    """The async twin of `_SettlingStream`."""

    def __init__(self, stream: httpx.AsyncByteStream, permit: Permit) -> None:
        self._stream = stream
        self._permit = permit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                _settle_exception(self._permit, exc)
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._permit.settled:
                self._permit.record_success()


_DEFAULTS: dict[str, Any] = {
    "total_timeout": 30.0,
    "attempt_timeout": 10.0,
    "retry": True,
    "breaker": True,
    "retry_methods": IDEMPOTENT_METHODS,
    "retry_statuses": RETRY_STATUSES,
    "failure_status": _failure_status,
    "idempotency_key": False,
    "buffer_bodies": False,
    "max_drain_bytes": 64 * 1024,
    "send_deadline_header": True,
}


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Fill in defaults; a default attempt timeout never exceeds a given total timeout."""
    merged = {**_DEFAULTS, **config}
    total = merged["total_timeout"]
    if "attempt_timeout" not in config and isinstance(total, (int, float)) and total > 0:
        merged["attempt_timeout"] = min(_DEFAULTS["attempt_timeout"], total)
    return merged


def _configure(
    transport: Any, options: dict[str, Any], base: type, default: Callable[..., Any]
) -> tuple[Any, _Pipeline]:
    """Split options into pipeline settings and inner-transport arguments; build both."""
    config = {key: options.pop(key) for key in list(options) if key in _DEFAULTS}
    if transport is not None and options:
        raise TypeError(
            f"pass either transport= or {default.__name__} arguments, not both: {sorted(options)}"
        )
    if transport is not None and not isinstance(transport, base):
        raise TypeError(f"transport= must be an httpx.{base.__name__}, got {transport!r}")
    inner = transport if transport is not None else default(**options)
    return inner, _Pipeline(**_with_defaults(config))


class _Configured:
    """What both transports expose of their configuration."""

    _pipeline: _Pipeline

    @property
    def breakers(self) -> CircuitBreaker | BreakerRegistry | None:
        """The breaker or registry in use (for metrics and manual control)."""
        return self._pipeline.breakers

    @property
    def retry(self) -> Retry | None:
        """The retry policy in use."""
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

    Args:
        transport: The inner transport; default `httpx.HTTPTransport(**kwargs)`.
        total_timeout: Seconds for the whole request, retries included (30).
        attempt_timeout: Seconds per attempt, <= total_timeout (10, or the
            total timeout if that is shorter and this is not given).
        retry: A `resilience.Retry`, True for the default, False for none.
        breaker: A `CircuitBreaker` for every origin, a `BreakerRegistry`
            (one breaker per scheme://host:port), True for the default
            registry, False for none.
        retry_methods: Methods retried (default: the idempotent ones).
        retry_statuses: Response statuses retried by the default retry.
        failure_status: Which statuses the breaker counts as failures
            (default: 5xx and 429).
        idempotency_key: Give POST/PATCH an `Idempotency-Key` (one per
            logical request, the same on every attempt) and retry them.
        buffer_bodies: Read one-shot request bodies into memory so that they
            can be retried (otherwise such requests are not retried).
        max_drain_bytes: A failed response is read up to this many bytes
            before a retry, so its connection is reused; a longer one is closed.
        send_deadline_header: Send the time left as `x-resilience-deadline-ms`.
        **kwargs: Arguments of `httpx.HTTPTransport` (verify, cert, http2,
            limits, proxy, retries, ...), when `transport` is not given.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, **options: Any) -> None:
        self._inner: httpx.BaseTransport
        self._inner, self._pipeline = _configure(
            transport, options, httpx.BaseTransport, httpx.HTTPTransport
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through deadline, retry, breaker and attempt timeout."""
        pipeline = self._pipeline
        options = pipeline.options(request)
        breaker = pipeline.breaker_for(request, options)
        retry, not_retried = pipeline.retry_for(request, options)
        if retry is not None and not isinstance(request.stream, httpx.ByteStream):
            request.read()  # buffer_bodies=True: make the body replayable
        attempts = 0

        def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            return self._attempt(pipeline.prepare(request, options), breaker)

        clock = _clock_of(breaker)
        started = clock.monotonic()
        total = pipeline.total(options)
        token = None if total is None else enter_deadline(total, clock)
        # A failed response that will be retried is drained or closed before
        # the wait, so it never holds its pooled connection through a backoff.
        discarding = _discard_for_this_call.set(self._discard)
        try:
            response = retry.call(attempt) if retry is not None else attempt()
        except Exception as exc:
            if not_retried and pipeline.retry is not None:
                exc.add_note(f"resilience: not retried: {not_retried}")
            raise
        finally:
            _discard_for_this_call.reset(discarding)
            if token is not None:
                leave_deadline(token)
        pipeline.report(response, attempts, breaker, clock.monotonic() - started)
        return response

    def _attempt(self, request: httpx.Request, breaker: CircuitBreaker | None) -> httpx.Response:
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except CircuitOpenError as error:
                raise _open_error(error, request) from None
        try:
            response = self._inner.handle_request(request)
        except BaseException as exc:
            _settle_exception(permit, exc)
            raise
        if permit is not None:
            if self._pipeline.failure_status(response.status_code):
                permit.record_failure()
            elif response.is_closed:  # the body is already in memory: nothing left to fail
                permit.record_success()
            else:
                response.stream = _SettlingStream(response.stream, permit)  # type: ignore[arg-type]
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

    def close(self) -> None:
        """Close the inner transport."""
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
        self._inner.__exit__(exc_type, exc, traceback)


class AsyncResilientTransport(_Configured, httpx.AsyncBaseTransport):
    """The async twin of `ResilientTransport`, for `httpx.AsyncClient`.

    Same arguments; `**kwargs` build an `httpx.AsyncHTTPTransport`. Works on
    asyncio and trio.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        self._inner: httpx.AsyncBaseTransport
        self._inner, self._pipeline = _configure(
            transport, options, httpx.AsyncBaseTransport, httpx.AsyncHTTPTransport
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through deadline, retry, breaker and attempt timeout."""
        pipeline = self._pipeline
        options = pipeline.options(request)
        breaker = pipeline.breaker_for(request, options)
        retry, not_retried = pipeline.retry_for(request, options)
        if retry is not None and not isinstance(request.stream, httpx.ByteStream):
            await request.aread()  # buffer_bodies=True: make the body replayable
        attempts = 0

        async def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            return await self._attempt(pipeline.prepare(request, options), breaker)

        clock = _clock_of(breaker)
        started = clock.monotonic()
        total = pipeline.total(options)
        token = None if total is None else enter_deadline(total, clock)
        discarding = _discard_for_this_call.set(self._discard)
        try:
            response = await (retry.acall(attempt) if retry is not None else attempt())
        except Exception as exc:
            if not_retried and pipeline.retry is not None:
                exc.add_note(f"resilience: not retried: {not_retried}")
            raise
        finally:
            _discard_for_this_call.reset(discarding)
            if token is not None:
                leave_deadline(token)
        pipeline.report(response, attempts, breaker, clock.monotonic() - started)
        return response

    async def _attempt(
        self, request: httpx.Request, breaker: CircuitBreaker | None
    ) -> httpx.Response:
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except CircuitOpenError as error:
                raise _open_error(error, request) from None
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            _settle_exception(permit, exc)
            raise
        if permit is not None:
            if self._pipeline.failure_status(response.status_code):
                permit.record_failure()
            elif response.is_closed:  # the body is already in memory: nothing left to fail
                permit.record_success()
            else:
                response.stream = _AsyncSettlingStream(response.stream, permit)  # type: ignore[arg-type]
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

    async def aclose(self) -> None:
        """Close the inner transport."""
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
        await self._inner.__aexit__(exc_type, exc, traceback)
