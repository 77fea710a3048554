"""Server side of deadline propagation: ASGI and WSGI middleware.

A caller that uses `resilience.ResilientTransport` sends the time it has left
as `x-resilience-deadline-ms`. This middleware reads it (or gRPC's
`grpc-timeout`, or Envoy's `x-envoy-expected-rq-timeout-ms`), clamps it to a
maximum, subtracts a safety margin, and runs the handler inside
`resilience.deadline(...)`: every outbound call the handler makes through the
transport inherits what is left, so gateway -> orders -> payments share one
budget. Headers are untrusted input: malformed, negative, absurd or repeated
values are ignored (and counted), never trusted for an unbounded budget.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._clock import Clock, resolve_clock
from ._compose import is_async_callable
from ._counter import peek
from ._deadline import DEADLINE_HEADER, enter_deadline, leave_deadline
from ._validate import check_int, check_seconds

__all__ = [
    "ENVOY_TIMEOUT_HEADER",
    "GRPC_TIMEOUT_HEADER",
    "ASGIDeadlineMiddleware",
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
        self.max_seconds = check_seconds(max_seconds, "max_seconds")
        self.default = None if default is None else check_seconds(default, "default")
        if self.default is not None and self.default > self.max_seconds:
            raise ValueError(f"default={default!r} exceeds max_seconds={max_seconds!r}")
        self.safety_margin = check_seconds(safety_margin, "safety_margin", allow_zero=True)
        if self.safety_margin >= self.max_seconds:
            raise ValueError(
                f"safety_margin={safety_margin!r} must be less than max_seconds={max_seconds!r}: "
                f"every caller's budget would be spent before the handler started"
            )
        if not isinstance(reject_expired, bool):
            raise TypeError(f"reject_expired= must be True or False, got {reject_expired!r}")
        self.reject_expired = reject_expired
        self.expired_status = check_int(expired_status, "expired_status", minimum=100)
        if self.expired_status > 599:
            raise ValueError(f"expired_status= must be an HTTP status, got {expired_status!r}")
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
    # or: app = ASGIDeadlineMiddleware(app, max_seconds=10)
    ```

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
        if budget is None:
            await self.app(scope, receive, send)
            return
        token, _ = enter_deadline(budget, self.policy.clock)
        try:
            await self.app(scope, receive, send)
        finally:
            leave_deadline(token)

    def metrics(self) -> dict[str, int]:
        """Requests with a usable deadline, invalid headers, clamped and expired budgets."""
        return self.policy.metrics()


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

    Same arguments as `ASGIDeadlineMiddleware`. Works per thread: the
    deadline lives in a context variable of the thread serving the request.

    ```python
    app.wsgi_app = resilience.middleware.WSGIDeadlineMiddleware(app.wsgi_app)
    ```
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
        self._environ_keys = {
            "HTTP_" + name.upper().replace("-", "_"): name for name in self.policy.headers
        }

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
        if budget is None:
            return self.app(environ, start_response)
        token, _ = enter_deadline(budget, self.policy.clock)
        try:
            # Frameworks (Flask, Django) build the response in this call. A body
            # generated lazily while the server iterates runs outside the deadline.
            return self.app(environ, start_response)
        finally:
            leave_deadline(token)

    def metrics(self) -> dict[str, int]:
        """Requests with a usable deadline, invalid headers, clamped and expired budgets."""
        return self.policy.metrics()
