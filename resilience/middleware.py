"""Server side of deadline propagation: ASGI and WSGI middleware.

A caller that uses `resilience.ResilientTransport` sends the time it has left
as `x-resilience-deadline-ms`. This middleware reads it (or gRPC's
`grpc-timeout`, or Envoy's `x-envoy-expected-rq-timeout-ms`), clamps it to a
maximum, subtracts a safety margin, and runs the handler inside
`resilience.deadline(...)`: every outbound call the handler makes through the
transport inherits what is left, so gateway -> orders -> payments share one
budget. Headers are untrusted input: malformed, negative, absurd or repeated
values are ignored (and counted), never trusted for an unbounded budget.

When the handler fails because of what this library decided (the deadline ran
out, a breaker or a bulkhead refused a call), the middleware answers for it:
504 or 503 with `Retry-After`, counted, with no traceback (see `ErrorAnswers`).
Any other exception propagates unchanged.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ._clock import Clock, resolve_clock
from ._compose import is_async_callable
from ._counter import peek
from ._deadline import (
    DEADLINE_HEADER,
    DEADLINE_SLACK,
    Deadline,
    enter_deadline,
    leave_deadline,
    outlive_deadline,
)
from ._limit import ConcurrencyLimit, LimitPermit
from ._limit_algorithms import Gradient2Limit
from ._refusals import MAX_RETRY_AFTER as MAX_RETRY_AFTER  # the longest Retry-After (a day)
from ._refusals import refusal_of
from ._tracking import track
from ._validate import check_bool, check_incoming_budget, check_int, check_seconds, check_string
from .errors import (
    ConcurrencyLimitExceededError,
)
from .events import DeadlineExceeded, ObserverHub, global_hub

if TYPE_CHECKING:
    from contextvars import Token

__all__ = [
    "DEADLINE_SLACK",
    "ENVOY_TIMEOUT_HEADER",
    "GRPC_TIMEOUT_HEADER",
    "ASGIConcurrencyLimitMiddleware",
    "ASGIDeadlineMiddleware",
    "Answer",
    "ErrorAnswers",
    "WSGIConcurrencyLimitMiddleware",
    "WSGIDeadlineMiddleware",
    "parse_deadline_header",
]

GRPC_TIMEOUT_HEADER = "grpc-timeout"
ENVOY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
#: Headers read, in order of preference; the first one present decides.
DEFAULT_HEADERS = (DEADLINE_HEADER, GRPC_TIMEOUT_HEADER, ENVOY_TIMEOUT_HEADER)

_MILLIS = re.compile(r"[0-9]{1,10}")
# gRPC over HTTP/2: TimeoutValue (1 to 8 digits) and TimeoutUnit H M S m u n.
_GRPC = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def parse_deadline_header(name: str, value: str) -> float | None:
    """Seconds from one deadline header value, or None if it is not well-formed.

    `x-resilience-deadline-ms` and `x-envoy-expected-rq-timeout-ms`: integer
    milliseconds (at most 10 digits). `grpc-timeout`: 1 to 8 digits and a unit
    (H, M, S, m, u, n), as the gRPC HTTP/2 protocol defines it. `name` is
    one of those three header names (any case); anything else is an error.
    """
    if not isinstance(name, str):
        raise TypeError(f"name= must be a header name (str), got {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"value= must be the header's value as a str, got {value!r}")
    name = name.lower()
    if name not in DEFAULT_HEADERS:
        raise ValueError(f"name= must be one of {list(DEFAULT_HEADERS)}, got {name!r}")
    text = value.strip()
    if name == GRPC_TIMEOUT_HEADER:
        match = _GRPC.fullmatch(text)
        return None if match is None else int(match[1]) * _GRPC_UNITS[match[2]]
    if _MILLIS.fullmatch(text) is None:
        return None
    return int(text) / 1000


def _check_status(status: object, param: str) -> int:
    checked = check_int(status, param, minimum=100)
    if checked > 599:
        raise ValueError(f"{param}= must be an HTTP status, got {status!r}")
    return checked


_DEADLINE_BODY = b"deadline exceeded: no time was left to finish the request\n"
_SHED_BODY = b"temporarily unable to handle the request; retry later\n"
_TEXT = "text/plain; charset=utf-8"


class Answer(NamedTuple):
    """The response that stands for an exception."""

    #: The HTTP status.
    status: int
    #: content-type and content-length, and retry-after for a shed request.
    headers: list[tuple[str, str]]
    #: A short text that says what happened, and nothing internal.
    body: bytes
    #: "deadline_exceeded" or "shed": the `metrics()` key it counts under.
    outcome: str

    @property
    def status_line(self) -> str:
        """`status` and its reason phrase, for WSGI's `start_response`."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        return f"{self.status} {phrase}"


class ErrorAnswers:
    """What an exception escaping a request handler becomes, and how often it happened.

    - `resilience.DeadlineExceededError` (including the transport's
      `HTTPDeadlineExceededError`): `deadline_status` (504).
    - An `httpx.TimeoutException` raised when the request's deadline has run
      out (within `DEADLINE_SLACK`): `deadline_status`. The deadline cut the
      downstream call short; an httpx timeout while time was left (an
      attempt timeout, a client with its own timeout) is not ours and
      propagates.
    - `CircuitOpenError` (including `HTTPCircuitOpenError`) and
      `BulkheadFullError`: `shed_status` (503) with `Retry-After`: the
      breaker's own `retry_after` rounded up to whole seconds when it
      knows it, `retry_after` otherwise; never less than 1.
    - Anything else: `None`, the caller re-raises it.

    Each answer is counted (`metrics()`); a deadline answer also publishes
    `resilience.events.DeadlineExceeded` under `name` (the policies that
    shed already published their own rejection event). The middlewares
    and `resilience.starlette.install_exception_handlers` build one each.

    Args:
        name: Names these answers in events and metrics.
        deadline_status: The status for a deadline that ran out (default 504).
        shed_status: The status for a call a breaker or bulkhead refused (503).
        retry_after: Seconds for `Retry-After` when the error gives none (1).
        clock: The clock of event timestamps.
    """

    def __init__(
        self,
        *,
        name: str,
        deadline_status: int = 504,
        shed_status: int = 503,
        retry_after: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self.name = check_string(name, "name")
        self.deadline_status = _check_status(deadline_status, "deadline_status")
        self.shed_status = _check_status(shed_status, "shed_status")
        self.retry_after = check_seconds(retry_after, "retry_after")
        self.clock = resolve_clock(clock)
        #: This middleware's observers; forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)
        self._deadline_exceeded: itertools.count[int] = itertools.count()
        self._shed: itertools.count[int] = itertools.count()

    def answer(self, exc: BaseException, deadline: Deadline | None) -> Answer | None:
        """The answer for `exc` escaping a request whose deadline is `deadline`, or None.

        Pure: nothing is counted until `record()`, once the answer was given.
        An exception group (a route that fanned out with a task group) is
        answered when every error in it is: 504 if any is a deadline's, else 503.
        """

        def timed_out(error: BaseException) -> bool:  # the deadline cut an httpx call short
            return (
                deadline is not None
                and _is_httpx_timeout(error)
                and deadline.remaining() <= DEADLINE_SLACK
            )

        refusal = refusal_of(exc, timed_out)
        if refusal is None:
            return None
        if refusal.outcome == "deadline_exceeded":
            return Answer(
                self.deadline_status, _headers(_DEADLINE_BODY), _DEADLINE_BODY, "deadline_exceeded"
            )
        seconds = refusal.retry_after
        if seconds is None:  # the error does not know: ours, at most a day as theirs
            seconds = min(self.retry_after, MAX_RETRY_AFTER)
        headers = _headers(_SHED_BODY)
        headers.append(("retry-after", str(max(1, math.ceil(seconds)))))
        return Answer(self.shed_status, headers, _SHED_BODY, "shed")

    def record(self, answer: Answer, exc: BaseException, deadline: Deadline | None) -> None:
        """Count an answer about to be given; publish `DeadlineExceeded` for a deadline answer."""
        if answer.outcome == "shed":
            next(self._shed)
            return
        next(self._deadline_exceeded)
        if self.events.active:
            budget = deadline.budget if deadline is not None else getattr(exc, "budget", None)
            self.events.publish(
                DeadlineExceeded(name=self.name, time=self.clock.monotonic(), budget=budget)
            )

    def metrics(self) -> dict[str, int]:
        """Requests answered for a deadline that ran out, and for a refused call (shed)."""
        return {"deadline_exceeded": peek(self._deadline_exceeded), "shed": peek(self._shed)}

    def __repr__(self) -> str:
        return f"<ErrorAnswers {self.name!r} {self.metrics()}>"


def _is_httpx_timeout(exc: BaseException) -> bool:
    # httpx is not imported for this: if nobody imported it, exc is not one of its errors.
    httpx = sys.modules.get("httpx")
    return httpx is not None and isinstance(exc, httpx.TimeoutException)


def _headers(body: bytes) -> list[tuple[str, str]]:
    return [("content-type", _TEXT), ("content-length", str(len(body)))]


class _DeadlinePolicy:
    """The decisions both middlewares share: which header, what budget, counted."""

    def __init__(
        self,
        *,
        max_seconds: float,
        default: float | None,
        safety_margin: float,
        reject_expired: bool,
        expired_status: int,
        headers: Iterable[str],
        clock: Clock | None,
    ) -> None:
        self.max_seconds, self.default, self.safety_margin = check_incoming_budget(
            max_seconds, default, safety_margin
        )
        self.reject_expired = check_bool(reject_expired, "reject_expired")
        self.expired_status = _check_status(expired_status, "expired_status")
        if isinstance(headers, (str, bytes)) or not isinstance(headers, Iterable):
            raise TypeError(f"headers= takes a sequence of header names, got {headers!r}")
        headers = tuple(headers)
        if not all(isinstance(name, str) for name in headers):
            raise TypeError(f"headers= must hold header names as str, got {list(headers)!r}")
        self.headers = tuple(name.lower() for name in headers)
        unknown = set(self.headers) - set(DEFAULT_HEADERS)
        if not self.headers or unknown:
            raise ValueError(
                f"headers= must name some of {list(DEFAULT_HEADERS)}, got {list(headers)}"
            )
        self.clock = resolve_clock(clock)
        self._with_deadline: itertools.count[int] = itertools.count()
        self._invalid: itertools.count[int] = itertools.count()
        self._clamped: itertools.count[int] = itertools.count()
        self._expired: itertools.count[int] = itertools.count()

    def budget(self, values: dict[str, list[str]]) -> float | None:
        """The budget for a request whose deadline headers are `values` (name -> values)."""
        for name in self.headers:
            found = values.get(name)
            if not found:
                continue
            seconds = parse_deadline_header(name, found[0]) if len(found) == 1 else None
            if seconds is None:
                next(self._invalid)  # garbage or repeated: treated as absent
                continue
            next(self._with_deadline)
            if seconds > self.max_seconds:
                next(self._clamped)
                seconds = self.max_seconds
            return max(seconds - self.safety_margin, 0.0)
        return self.default

    def enter(self, budget: float | None) -> tuple[Token[Deadline | None] | None, Deadline | None]:
        """Open the request's deadline (nothing without a budget): its token and the deadline."""
        if budget is None:
            return None, None
        return enter_deadline(budget, self.clock)

    def expired(self, budget: float | None) -> bool:
        if budget is not None and budget <= 0 and self.reject_expired:
            next(self._expired)
            return True
        return False

    def metrics(self) -> dict[str, int]:
        return {
            "with_deadline": peek(self._with_deadline),
            "invalid": peek(self._invalid),
            "clamped": peek(self._clamped),
            "expired": peek(self._expired),
        }


class ASGIDeadlineMiddleware:
    """Run each HTTP request of an ASGI app inside the deadline its caller sent.

    ```python
    app = Starlette(...)  # or FastAPI()
    app.add_middleware(resilience.middleware.ASGIDeadlineMiddleware, max_seconds=10)
    # or, for an app that does not turn exceptions into 500s itself:
    app = ASGIDeadlineMiddleware(app, max_seconds=10)
    ```

    With Starlette and FastAPI, use `add_middleware`: it places the
    middleware inside Starlette's `ServerErrorMiddleware`, so an exception
    from a route reaches it before a 500 has been sent.

    When the handler raises, before the response has started, an exception
    that `ErrorAnswers` maps (the deadline ran out: 504; a breaker or a
    bulkhead refused a call: 503 with `Retry-After`), the middleware sends
    that answer instead, counts it, and logs no traceback. Once the
    response has started it re-raises (the server ends the response).
    Every other exception propagates unchanged.

    Args:
        app: The ASGI application.
        max_seconds: The largest budget accepted from a caller (default 30).
        default: The budget of a request that sent none (default: no deadline).
        safety_margin: Seconds kept back from the caller's budget, for this
            service to answer before its caller gives up (default 0).
        reject_expired: Answer at once with `expired_status` when the budget
            has already run out (default True).
        expired_status: The status for an expired budget (default 504).
        headers: The headers read, in order of preference (default: all three).
        clock: A `resilience.Clock`.
        map_errors: Answer for the exceptions above (default True); False lets
            every exception propagate.
        deadline_status: The status when the deadline ran out in the handler (504).
        shed_status: The status when a breaker or bulkhead refused a call (503).
        retry_after: `Retry-After` seconds when the error does not know (1).
        name: Names this middleware in metrics and events (default "asgi").
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_seconds: float = 30.0,
        default: float | None = None,
        safety_margin: float = 0.0,
        reject_expired: bool = True,
        expired_status: int = 504,
        headers: Iterable[str] = DEFAULT_HEADERS,
        clock: Clock | None = None,
        map_errors: bool = True,
        deadline_status: int = 504,
        shed_status: int = 503,
        retry_after: float = 1.0,
        name: str = "asgi",
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, got {app!r}")
        self.app = app
        self.policy = _DeadlinePolicy(
            max_seconds=max_seconds,
            default=default,
            safety_margin=safety_margin,
            reject_expired=reject_expired,
            expired_status=expired_status,
            headers=headers,
            clock=clock,
        )
        self.map_errors = check_bool(map_errors, "map_errors")
        self.answers = ErrorAnswers(
            name=name,
            deadline_status=deadline_status,
            shed_status=shed_status,
            retry_after=retry_after,
            clock=self.policy.clock,
        )
        self.name = self.answers.name
        #: Where deadline answers are published (`resilience.events.DeadlineExceeded`).
        self.events = self.answers.events
        track("middleware", self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; only HTTP requests get a deadline."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = self.policy.headers
        values: dict[str, list[str]] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            if name in wanted:
                values.setdefault(name, []).append(raw_value.decode("latin-1"))
        budget = self.policy.budget(values)
        if self.policy.expired(budget):
            await _send_expired(send, self.policy.expired_status)
            return
        token, entered = self.policy.enter(budget)
        try:
            started = False

            async def watched(message: MutableMapping[str, Any]) -> None:
                nonlocal started
                kind = message["type"]
                if kind == "http.response.start":
                    started = True
                await send(message)
                if (
                    token is not None
                    and kind == "http.response.body"
                    and not message.get("more_body", False)
                ):
                    # The response is complete: work after it (background
                    # tasks) is no longer bound by the caller's deadline.
                    outlive_deadline(token)

            if not self.map_errors:
                await self.app(scope, receive, watched)
                return
            try:
                await self.app(scope, receive, watched)
            except Exception as exc:
                answer = self.answers.answer(exc, entered)
                if answer is None or started:
                    raise
                # Counted first: whoever reads the metrics after the answer sees it.
                self.answers.record(answer, exc, entered)
                await _send_answer(send, answer)
        finally:
            if token is not None:
                leave_deadline(token)

    def metrics(self) -> dict[str, int]:
        """Counts: deadlines received, invalid, clamped, expired; then answers given.

        `with_deadline`, `invalid`, `clamped`, `expired` (answered before the
        handler ran), `deadline_exceeded` (ran out in the handler) and
        `shed` (a breaker or bulkhead refused a call).
        """
        return {**self.policy.metrics(), **self.answers.metrics()}


async def _send_answer(send: Send, answer: Answer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})


async def _send_expired(send: Send, status: int) -> None:
    body = b"deadline exceeded before the request was handled\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class WSGIDeadlineMiddleware:
    """Run each request of a WSGI app (Flask, Django...) inside its caller's deadline.

    Same arguments as `ASGIDeadlineMiddleware` (`name` defaults to "wsgi").
    Works per thread: the deadline lives in a context variable of the thread
    serving the request.

    ```python
    app.wsgi_app = resilience.middleware.WSGIDeadlineMiddleware(app.wsgi_app)
    ```

    An exception raised by the app's call that `ErrorAnswers` maps becomes
    its answer (504, or 503 with `Retry-After`), as long as no header has
    been sent: if the app called `start_response`, the answer replaces its
    headers (`start_response(..., exc_info)`, as PEP 3333 says); if it
    already wrote through the `write` callable, the exception is re-raised.
    Errors raised while the server iterates a lazily generated body are not
    mapped (that body runs outside the deadline too).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        max_seconds: float = 30.0,
        default: float | None = None,
        safety_margin: float = 0.0,
        reject_expired: bool = True,
        expired_status: int = 504,
        headers: Iterable[str] = DEFAULT_HEADERS,
        clock: Clock | None = None,
        map_errors: bool = True,
        deadline_status: int = 504,
        shed_status: int = 503,
        retry_after: float = 1.0,
        name: str = "wsgi",
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, got {app!r}")
        if is_async_callable(app):
            raise TypeError(
                f"app {app!r} is async (an ASGI application?): WSGIDeadlineMiddleware calls "
                f"it synchronously and would get a coroutine back. Use ASGIDeadlineMiddleware."
            )
        self.app = app
        self.policy = _DeadlinePolicy(
            max_seconds=max_seconds,
            default=default,
            safety_margin=safety_margin,
            reject_expired=reject_expired,
            expired_status=expired_status,
            headers=headers,
            clock=clock,
        )
        self.map_errors = check_bool(map_errors, "map_errors")
        self.answers = ErrorAnswers(
            name=name,
            deadline_status=deadline_status,
            shed_status=shed_status,
            retry_after=retry_after,
            clock=self.policy.clock,
        )
        self.name = self.answers.name
        #: Where deadline answers are published (`resilience.events.DeadlineExceeded`).
        self.events = self.answers.events
        self._environ_keys = {
            "HTTP_" + name.upper().replace("-", "_"): name for name in self.policy.headers
        }
        track("middleware", self)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Handle one WSGI request inside its caller's deadline."""
        values: dict[str, list[str]] = {}
        for key, name in self._environ_keys.items():
            raw = environ.get(key)
            if raw is not None:
                # WSGI servers join repeated headers with commas.
                values[name] = str(raw).split(",")
        budget = self.policy.budget(values)
        if self.policy.expired(budget):
            body = b"deadline exceeded before the request was handled\n"
            start_response(
                f"{self.policy.expired_status} Deadline Exceeded",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        token, entered = self.policy.enter(budget)
        try:
            # Frameworks (Flask, Django) build the response in this call. A body
            # generated lazily while the server iterates runs outside the deadline.
            if not self.map_errors:
                return self.app(environ, start_response)
            watch = _WatchedStart(start_response)
            try:
                return self.app(environ, watch)
            except Exception as exc:
                answer = self.answers.answer(exc, entered)
                if answer is None or watch.wrote:
                    raise
                if watch.called:
                    # PEP 3333: replaces the app's headers, or re-raises exc if
                    # the server sent them already.
                    start_response(answer.status_line, answer.headers, sys.exc_info())
                else:
                    start_response(answer.status_line, answer.headers)
                self.answers.record(answer, exc, entered)
                return [answer.body]
        finally:
            if token is not None:
                leave_deadline(token)

    def metrics(self) -> dict[str, int]:
        """Counts: deadlines received, invalid, clamped, expired; then answers given.

        `with_deadline`, `invalid`, `clamped`, `expired` (answered before the
        handler ran), `deadline_exceeded` (ran out in the handler) and
        `shed` (a breaker or bulkhead refused a call).
        """
        return {**self.policy.metrics(), **self.answers.metrics()}


class _WatchedStart:
    """A `start_response` that remembers whether it was called, and its `write` used."""

    __slots__ = ("called", "start_response", "wrote")

    def __init__(self, start_response: Callable[..., Any]) -> None:
        self.start_response = start_response
        self.called = False
        self.wrote = False

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.called = True
        write = (
            self.start_response(status, headers)
            if exc_info is None
            else self.start_response(status, headers, exc_info)
        )

        def watched_write(data: bytes) -> Any:
            if data:
                self.wrote = True
            return write(data)

        return watched_write


#: Statuses a handler answers when it is itself overloaded: a drop for the limit.
DEFAULT_DROP_STATUSES = frozenset({429, 503})


class _Shedding:
    """What both load-shedding middlewares share: the limit, the answer, the counts."""

    def __init__(
        self,
        *,
        limit: ConcurrencyLimit | None,
        drop_statuses: Iterable[int],
        shed_status: int,
        retry_after: float,
        name: str,
    ) -> None:
        name = check_string(name, "name")
        if limit is None:
            limit = ConcurrencyLimit(Gradient2Limit(), name=name)
        elif not isinstance(limit, ConcurrencyLimit):
            raise TypeError(f"limit= must be a resilience.ConcurrencyLimit or None, got {limit!r}")
        self.limit = limit
        if isinstance(drop_statuses, (str, bytes)) or not isinstance(drop_statuses, Iterable):
            raise TypeError(f"drop_statuses= takes a collection of statuses, got {drop_statuses!r}")
        self.drop_statuses = frozenset(
            _check_status(status, "drop_statuses") for status in drop_statuses
        )
        self.answers = ErrorAnswers(
            name=name, shed_status=shed_status, retry_after=retry_after, clock=limit.clock
        )
        self.name = name

    def shed(self, exc: ConcurrencyLimitExceededError) -> Answer:
        answer = cast("Answer", self.answers.answer(exc, None))
        self.answers.record(answer, exc, None)
        return answer

    def settle(self, permit: LimitPermit, status: int | None) -> None:
        """The response ended (or the handler returned): a sample, a drop, or nothing."""
        if permit.settled:
            return
        if status is None:
            permit.release()  # no response: nothing measured
        elif status in self.drop_statuses:
            permit.record_drop()
        else:
            permit.record_success()

    def metrics(self) -> dict[str, int]:
        """Requests shed, then the limit's own counts (`ConcurrencyLimit.metrics()`)."""
        return {"shed": self.answers.metrics()["shed"], **self.limit.metrics()}


class ASGIConcurrencyLimitMiddleware:
    """Shed inbound HTTP requests over the service's own adaptive concurrency limit.

    ```python
    app.add_middleware(resilience.middleware.ASGIConcurrencyLimitMiddleware)
    # or: app = ASGIConcurrencyLimitMiddleware(app, limit=ConcurrencyLimit(VegasLimit()))
    ```

    Each HTTP request is admitted through `limit` before the app sees it. A
    request over the limit (at once, or after the limit's `max_wait`) gets
    `shed_status` (503) with `Retry-After` and never reaches the app. An
    admitted request is settled exactly once: when the last body message
    has been sent, a sample of the whole request's latency, or a drop if the
    app answered one of `drop_statuses` (429, 503); an exception, as the
    limit classifies it (a timeout or deadline cut is a drop; cancellation,
    a client that went away and other errors say nothing); a handler that
    returned without answering says nothing. Lifespan and websocket scopes
    pass through untouched.

    Args:
        app: The ASGI application.
        limit: The `resilience.ConcurrencyLimit` (default: one with
            `Gradient2Limit()`, a latency-based algorithm, named `name`).
        drop_statuses: Statuses of the app's answers that are drops (429, 503).
        shed_status: The status of a shed request (503).
        retry_after: `Retry-After` seconds of a shed request (1; rounded up).
        name: Names the middleware (and the default limit) in metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: ConcurrencyLimit | None = None,
        drop_statuses: Iterable[int] = DEFAULT_DROP_STATUSES,
        shed_status: int = 503,
        retry_after: float = 1.0,
        name: str = "asgi-limit",
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, got {app!r}")
        self.app = app
        self._shedding = _Shedding(
            limit=limit,
            drop_statuses=drop_statuses,
            shed_status=shed_status,
            retry_after=retry_after,
            name=name,
        )
        self.name = self._shedding.name
        #: The limit every request goes through.
        self.limit = self._shedding.limit
        track("middleware", self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit one HTTP request through the limit, or answer 503; other scopes pass."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        shedding = self._shedding
        try:
            permit = await shedding.limit.aacquire()
        except ConcurrencyLimitExceededError as exc:
            await _send_answer(send, shedding.shed(exc))
            return
        status: int | None = None

        async def watched(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                shedding.settle(permit, status)  # the response is complete

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            if not permit.settled:
                permit.record_exception(exc)
            raise
        shedding.settle(permit, status)

    def metrics(self) -> dict[str, int]:
        """`shed` (answered 503 here), then the limit's counts: `limit`, `in_flight`..."""
        return self._shedding.metrics()


class WSGIConcurrencyLimitMiddleware:
    """The WSGI twin of `ASGIConcurrencyLimitMiddleware` (Flask, Django...).

    ```python
    app.wsgi_app = resilience.middleware.WSGIConcurrencyLimitMiddleware(app.wsgi_app)
    ```

    A request waits for a slot blocking its own thread (the limit's
    `max_wait`, 0 by default). An admitted request is settled when the
    server closes the response iterable (PEP 3333 servers always do): a
    sample of the latency to the end of the body, or a drop for one of
    `drop_statuses`; an exception from the app or while the body is
    iterated, as the limit classifies it. Same arguments as the ASGI one
    (`name` defaults to "wsgi-limit").
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        limit: ConcurrencyLimit | None = None,
        drop_statuses: Iterable[int] = DEFAULT_DROP_STATUSES,
        shed_status: int = 503,
        retry_after: float = 1.0,
        name: str = "wsgi-limit",
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, got {app!r}")
        if is_async_callable(app):
            raise TypeError(
                f"app {app!r} is async (an ASGI application?): use ASGIConcurrencyLimitMiddleware"
            )
        self.app = app
        self._shedding = _Shedding(
            limit=limit,
            drop_statuses=drop_statuses,
            shed_status=shed_status,
            retry_after=retry_after,
            name=name,
        )
        self.name = self._shedding.name
        #: The limit every request goes through.
        self.limit = self._shedding.limit
        track("middleware", self)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Admit one request through the limit, or answer 503."""
        shedding = self._shedding
        try:
            permit = shedding.limit.acquire()
        except ConcurrencyLimitExceededError as exc:
            answer = shedding.shed(exc)
            start_response(answer.status_line, answer.headers)
            return [answer.body]
        body = _SettlingBody(shedding, permit)

        def watched(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = status.split(" ", 1)[0]
            body.status = int(code) if code.isdigit() else None
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            body.body = self.app(environ, watched)
        except BaseException as exc:
            permit.record_exception(exc)
            raise
        return body

    def metrics(self) -> dict[str, int]:
        """`shed` (answered 503 here), then the limit's counts: `limit`, `in_flight`..."""
        return self._shedding.metrics()


class _SettlingBody:
    """A WSGI response iterable that settles its request's permit once, when it ends."""

    __slots__ = ("body", "permit", "shedding", "status")

    def __init__(self, shedding: _Shedding, permit: LimitPermit) -> None:
        self.shedding = shedding
        self.permit = permit
        self.status: int | None = None
        self.body: Iterable[bytes] = ()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.body
        except BaseException as exc:
            if not self.permit.settled:
                self.permit.record_exception(exc)
            raise

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.shedding.settle(self.permit, self.status)
