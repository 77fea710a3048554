"""What the middlewares answer when a handler fails because of a deadline, a breaker, a bulkhead."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request

import resilience
from resilience.events import DeadlineExceeded, Event
from resilience.middleware import (
    ASGIDeadlineMiddleware,
    ErrorAnswers,
    WSGIDeadlineMiddleware,
)
from resilience.testing import FakeClock
from resilience.transport import HTTPCircuitOpenError, HTTPDeadlineExceededError

OPEN = resilience.State.OPEN


def raising(make: Any) -> Any:
    """A bare ASGI app that raises what `make(request)` returns.

    Bare, not a Starlette app: wrapped around a whole Starlette app, the
    middleware would sit outside Starlette's ServerErrorMiddleware, which
    sends a 500 before re-raising (see test_fastapi.py).
    """

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise make(Request(scope, receive))

    return app


def asgi(make: Any, **options: Any) -> tuple[httpx.AsyncClient, ASGIDeadlineMiddleware]:
    options.setdefault("clock", FakeClock())
    middleware = ASGIDeadlineMiddleware(raising(make), **options)
    # raise_app_exceptions: an exception the middleware lets through reaches the test.
    transport = httpx.ASGITransport(app=middleware)
    return httpx.AsyncClient(transport=transport, base_url="http://app"), middleware


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        resilience.DeadlineExceededError("payments", 0.5),
        HTTPDeadlineExceededError("http", 0.5, before_call=True),
        resilience.DeadlineExceededError(),
    ],
    ids=["DeadlineExceededError", "HTTPDeadlineExceededError", "bare"],
)
async def test_a_deadline_error_is_a_504(error: Exception) -> None:
    """DeadlineExceededError (the transport's too) escaping the handler: 504, a short text."""
    client, middleware = asgi(lambda request: error)
    async with client:
        response = await client.get("/", headers={"x-resilience-deadline-ms": "800"})
        without_deadline = await client.get("/")
    for answer in (response, without_deadline):
        assert answer.status_code == 504
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.text == "deadline exceeded: no time was left to finish the request\n"
        assert "retry-after" not in answer.headers
    assert middleware.metrics()["deadline_exceeded"] == 2
    assert middleware.metrics()["shed"] == 0


@pytest.mark.anyio
async def test_an_httpx_timeout_is_a_504_only_once_the_deadline_ran_out() -> None:
    """The rule: an httpx timeout is the deadline's doing when the request's deadline is spent."""
    clock = FakeClock()

    def timeout_after(request: Request) -> Exception:
        clock.advance(float(request.query_params["spend"]))
        return httpx.ReadTimeout("timed out")

    client, middleware = asgi(timeout_after, clock=clock)
    deadline = {"x-resilience-deadline-ms": "500"}
    async with client:
        assert (await client.get("/?spend=0.5", headers=deadline)).status_code == 504
        assert (await client.get("/?spend=0.9", headers=deadline)).status_code == 504
        # Within DEADLINE_SLACK (1 ms) of the end: timer rounding, still the deadline.
        assert (await client.get("/?spend=0.4995", headers=deadline)).status_code == 504
        # Time was left: an attempt timeout or the handler's own client. Not ours.
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/?spend=0.3", headers=deadline)
        # No deadline at all: nothing for the timeout to be caused by.
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/?spend=5")
    assert middleware.metrics()["deadline_exceeded"] == 3


@pytest.mark.anyio
async def test_a_middleware_default_deadline_counts_too() -> None:
    """A request without a header runs inside `default`; its end makes an httpx timeout a 504."""
    clock = FakeClock()

    def spend(request: Request) -> Exception:
        clock.advance(2.0)
        return httpx.ConnectTimeout("timed out")

    client, _ = asgi(spend, clock=clock, default=2.0)
    async with client:
        assert (await client.get("/")).status_code == 504


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "options", "retry_after"),
    [
        (resilience.CircuitOpenError("payments", OPEN, 2.3), {}, "3"),
        (resilience.CircuitOpenError("payments", OPEN, 7.0), {}, "7"),
        (resilience.CircuitOpenError("payments", OPEN, 0.0001), {}, "1"),
        (resilience.CircuitOpenError("payments", OPEN, 0.0), {}, "1"),
        (resilience.CircuitOpenError("payments", resilience.State.FORCED_OPEN, None), {}, "1"),
        (resilience.CircuitOpenError("payments", OPEN, None), {"retry_after": 4.2}, "5"),
        (resilience.CircuitOpenError("payments", resilience.State.HALF_OPEN, None), {}, "1"),
        (HTTPCircuitOpenError("http://payments:80", OPEN, 9.5), {}, "10"),
        (resilience.BulkheadFullError("pool", 4, 0.1), {}, "1"),
        (resilience.BulkheadFullError("pool", 4), {"retry_after": 30}, "30"),
    ],
)
async def test_a_refused_call_is_a_503_with_retry_after(
    error: Exception, options: dict[str, Any], retry_after: str
) -> None:
    """Breaker open, bulkhead full: 503 and Retry-After, whole seconds rounded up, at least 1."""
    client, middleware = asgi(lambda request: error, **options)
    async with client:
        response = await client.get("/", headers={"x-resilience-deadline-ms": "800"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == retry_after
    assert response.text == "temporarily unable to handle the request; retry later\n"
    # Nothing internal: no breaker, bulkhead or origin name.
    assert "payments" not in response.text
    assert "pool" not in response.text
    assert middleware.metrics()["shed"] == 1
    assert middleware.metrics()["deadline_exceeded"] == 0


class NotOurs(Exception):
    pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        NotOurs("boom"),
        TimeoutError("the handler's own"),
        resilience.RetryBudgetExhaustedError("payments"),
        httpx.ConnectError("refused"),
        ExceptionGroup("mixed", [resilience.DeadlineExceededError(), NotOurs("and this")]),
    ],
    ids=["NotOurs", "TimeoutError", "RetryBudgetExhausted", "ConnectError", "MixedGroup"],
)
async def test_other_exceptions_propagate_unchanged(error: Exception) -> None:
    """Any other exception is re-raised as itself, and nothing is counted."""
    client, middleware = asgi(lambda request: error)
    async with client:
        with pytest.raises(type(error)) as raised:
            await client.get("/", headers={"x-resilience-deadline-ms": "800"})
    assert raised.value is error
    assert middleware.metrics()["deadline_exceeded"] == middleware.metrics()["shed"] == 0


async def _call(app: Any, path: str = "/") -> tuple[list[dict[str, Any]], BaseException | None]:
    """Call an ASGI app directly; return what it sent and what it raised."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(b"x-resilience-deadline-ms", b"800")],
    }
    try:
        await app(scope, receive, send)
    except Exception as exc:
        return sent, exc
    return sent, None


@pytest.mark.anyio
async def test_after_the_response_started_the_error_is_reraised() -> None:
    """Headers already sent: the middleware cannot answer; the server handles the error."""
    error = resilience.DeadlineExceededError("payments", 0.5)

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first part", "more_body": True})
        raise error

    middleware = ASGIDeadlineMiddleware(streaming)
    sent, raised = await _call(middleware)
    assert raised is error
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert middleware.metrics()["deadline_exceeded"] == 0


@pytest.mark.anyio
async def test_the_answer_is_a_complete_asgi_response() -> None:
    """Start (status, headers as bytes) then the whole body."""

    async def shed(scope: Any, receive: Any, send: Any) -> None:
        raise resilience.BulkheadFullError("pool", 2)

    sent, raised = await _call(ASGIDeadlineMiddleware(shed))
    assert raised is None
    assert sent == [
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"54"),
                (b"retry-after", b"1"),
            ],
        },
        {
            "type": "http.response.body",
            "body": b"temporarily unable to handle the request; retry later\n",
        },
    ]


@pytest.mark.anyio
async def test_map_errors_false_lets_everything_through() -> None:
    """map_errors=False: the middleware only propagates deadlines, as before."""
    error = resilience.DeadlineExceededError()
    client, middleware = asgi(lambda request: error, map_errors=False)
    async with client:
        with pytest.raises(resilience.DeadlineExceededError) as raised:
            await client.get("/", headers={"x-resilience-deadline-ms": "800"})
    assert raised.value is error
    assert middleware.metrics()["deadline_exceeded"] == 0


@pytest.mark.anyio
async def test_statuses_are_configurable() -> None:
    """deadline_status and shed_status replace 504 and 503."""
    errors = iter([resilience.DeadlineExceededError(), resilience.CircuitOpenError("x", OPEN, 1)])
    client, _ = asgi(lambda request: next(errors), deadline_status=408, shed_status=429)
    async with client:
        assert (await client.get("/")).status_code == 408
        shed = await client.get("/")
    assert shed.status_code == 429
    assert shed.headers["retry-after"] == "1"


@pytest.mark.anyio
async def test_a_deadline_answer_publishes_an_event() -> None:
    """A 504 is published as DeadlineExceeded under the middleware's name: no traceback logged."""
    seen: list[Event] = []
    clock = FakeClock()
    client, middleware = asgi(
        lambda request: resilience.DeadlineExceededError(), clock=clock, name="orders"
    )
    middleware.events.subscribe(seen.append)
    unsubscribe = resilience.events.subscribe(seen.append)
    try:
        async with client:
            await client.get("/", headers={"x-resilience-deadline-ms": "800"})
            await client.get("/")
    finally:
        unsubscribe()
    expected = [
        DeadlineExceeded(name="orders", time=0.0, budget=0.8),
        DeadlineExceeded(name="orders", time=0.0, budget=None),
    ]
    # Once from the middleware's own hub, once more through the global hub.
    assert seen == [expected[0], expected[0], expected[1], expected[1]]


@pytest.mark.anyio
async def test_a_shed_answer_publishes_nothing_more() -> None:
    """The breaker or bulkhead that refused already published its rejection event."""
    seen: list[Event] = []
    client, middleware = asgi(lambda request: resilience.BulkheadFullError("pool", 1))
    middleware.events.subscribe(seen.append)
    async with client:
        assert (await client.get("/")).status_code == 503
    assert seen == []


# --- WSGI -------------------------------------------------------------------------------------


def wsgi_raising(error: Exception, *, start: bool = False, write: bool = False) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if start or write:
            writer = start_response("200 OK", [("Content-Type", "application/json")])
            if write:
                writer(b"{")
        raise error

    return app


class Recorder:
    """A start_response that records its calls, like a server that has sent nothing yet."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.written: list[bytes] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.calls.append((status, headers, exc_info))
        return self.written.append


def test_wsgi_maps_errors_raised_by_the_app() -> None:
    """The same answers from WSGIDeadlineMiddleware: 504, 503 + Retry-After, counted."""
    cases = [
        (resilience.DeadlineExceededError(), "504 Gateway Timeout", None),
        (resilience.CircuitOpenError("p", OPEN, 1.5), "503 Service Unavailable", "2"),
        (resilience.BulkheadFullError("pool", 1), "503 Service Unavailable", "1"),
    ]
    for error, status, retry_after in cases:
        middleware = WSGIDeadlineMiddleware(wsgi_raising(error))
        start = Recorder()
        body = b"".join(middleware({"HTTP_X_RESILIENCE_DEADLINE_MS": "800"}, start))
        ((line, headers, exc_info),) = start.calls
        assert line == status
        assert exc_info is None  # the app never called start_response
        assert dict(headers).get("retry-after") == retry_after
        assert dict(headers)["content-length"] == str(len(body))
        assert body.startswith((b"deadline exceeded", b"temporarily unable"))
    assert middleware.metrics()["shed"] == 1


def test_wsgi_httpx_timeout_rule() -> None:
    """An httpx timeout is a 504 once the request's deadline ran out, else it propagates."""
    clock = FakeClock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        clock.advance(float(environ["QUERY_STRING"]))
        raise httpx.ReadTimeout("timed out")

    middleware = WSGIDeadlineMiddleware(app, clock=clock)
    environ = {"HTTP_X_RESILIENCE_DEADLINE_MS": "500"}
    start = Recorder()
    middleware({**environ, "QUERY_STRING": "0.5"}, start)
    assert start.calls[0][0] == "504 Gateway Timeout"
    with pytest.raises(httpx.ReadTimeout):
        middleware({**environ, "QUERY_STRING": "0.2"}, Recorder())
    with pytest.raises(httpx.ReadTimeout):
        middleware({"QUERY_STRING": "9"}, Recorder())
    assert middleware.metrics()["deadline_exceeded"] == 1


def test_wsgi_replaces_headers_the_app_set() -> None:
    """The app called start_response, nothing was sent: the answer replaces it (PEP 3333)."""
    error = resilience.DeadlineExceededError()
    start = Recorder()
    middleware = WSGIDeadlineMiddleware(wsgi_raising(error, start=True))
    middleware({}, start)
    (_, _, first), (line, _, exc_info) = start.calls
    assert first is None
    assert line == "504 Gateway Timeout"
    assert exc_info is not None
    assert exc_info[1] is error


def test_wsgi_after_a_write_the_error_is_reraised() -> None:
    """The app wrote through `write`: the headers are gone, the error propagates unchanged."""
    error = resilience.DeadlineExceededError()
    start = Recorder()
    middleware = WSGIDeadlineMiddleware(wsgi_raising(error, write=True))
    with pytest.raises(resilience.DeadlineExceededError) as raised:
        middleware({}, start)
    assert raised.value is error
    assert start.written == [b"{"]
    assert len(start.calls) == 1
    assert middleware.metrics()["deadline_exceeded"] == 0


def test_wsgi_server_that_sent_headers_reraises() -> None:
    """If the server already sent the app's headers, start_response(exc_info) re-raises."""
    error = resilience.DeadlineExceededError()

    def sent_already(status: str, headers: Any, exc_info: Any = None) -> Any:
        if exc_info is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        return lambda data: None

    middleware = WSGIDeadlineMiddleware(wsgi_raising(error, start=True))
    with pytest.raises(resilience.DeadlineExceededError) as raised:
        middleware({}, sent_already)
    assert raised.value is error
    assert middleware.metrics()["deadline_exceeded"] == 0


def test_wsgi_other_errors_and_map_errors_false_propagate() -> None:
    """Not ours, or mapping switched off: the exception propagates as itself."""
    error = NotOurs()
    with pytest.raises(NotOurs) as raised:
        WSGIDeadlineMiddleware(wsgi_raising(error))({}, Recorder())
    assert raised.value is error
    deadline = resilience.DeadlineExceededError()
    off = WSGIDeadlineMiddleware(wsgi_raising(deadline), map_errors=False)
    with pytest.raises(resilience.DeadlineExceededError):
        off({}, Recorder())
    assert off.metrics()["deadline_exceeded"] == 0


def test_wsgi_deadline_is_left_after_a_mapped_error() -> None:
    """The request's deadline does not leak into the serving thread after an answer."""
    middleware = WSGIDeadlineMiddleware(wsgi_raising(resilience.DeadlineExceededError()))
    middleware({"HTTP_X_RESILIENCE_DEADLINE_MS": "800"}, Recorder())
    assert resilience.remaining() is None


def test_wsgi_answer_is_json_free_text() -> None:
    """The body is short text, not JSON, and names nothing internal."""
    middleware = WSGIDeadlineMiddleware(
        wsgi_raising(resilience.CircuitOpenError("secret", OPEN, 1))
    )
    body = b"".join(middleware({}, Recorder()))
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    assert b"secret" not in body


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"map_errors": "yes"}, TypeError, "map_errors="),
        ({"map_errors": 1}, TypeError, "map_errors="),
        ({"map_errors": None}, TypeError, "map_errors="),
        ({"deadline_status": 99}, ValueError, "deadline_status="),
        ({"deadline_status": 600}, ValueError, "deadline_status="),
        ({"deadline_status": "504"}, TypeError, "deadline_status="),
        ({"deadline_status": True}, TypeError, "deadline_status="),
        ({"shed_status": 1000}, ValueError, "shed_status="),
        ({"shed_status": 503.0}, TypeError, "shed_status="),
        ({"retry_after": 0}, ValueError, "retry_after="),
        ({"retry_after": -1}, ValueError, "retry_after="),
        ({"retry_after": math.inf}, ValueError, "retry_after="),
        ({"retry_after": math.nan}, ValueError, "retry_after="),
        ({"retry_after": "1"}, TypeError, "retry_after="),
        ({"name": ""}, ValueError, "name="),
        ({"name": 3}, TypeError, "name="),
    ],
)
def test_bad_answer_configuration(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Both middlewares, and ErrorAnswers itself, validate the new parameters."""
    with pytest.raises(error, match=match):
        ASGIDeadlineMiddleware(raising(NotOurs), **options)
    with pytest.raises(error, match=match):
        WSGIDeadlineMiddleware(wsgi_raising(NotOurs()), **options)
    if "map_errors" not in options:
        with pytest.raises(error, match=match):
            ErrorAnswers(**{"name": "x", **options})


def test_middleware_is_not_imported_with_httpx() -> None:
    """The httpx check costs no import: without httpx loaded, no error can be one of its."""
    import subprocess

    code = (
        "import sys, resilience.middleware as m\n"
        "assert 'httpx' not in sys.modules\n"
        "a = m.ErrorAnswers(name='x')\n"
        "print(a.answer(TimeoutError(), None))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


# --- what the docs promise besides --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout]
)
async def test_every_httpx_timeout_follows_the_rule(error: type[Exception]) -> None:
    """Connect, read, write and pool timeouts alike; 2 ms left is beyond the 1 ms slack."""
    clock = FakeClock()

    def spend(request: Request) -> Exception:
        clock.advance(float(request.query_params["spend"]))
        return error("timed out")

    client, middleware = asgi(spend, clock=clock)
    deadline = {"x-resilience-deadline-ms": "500"}
    async with client:
        assert (await client.get("/?spend=0.5", headers=deadline)).status_code == 504
        with pytest.raises(error):
            await client.get("/?spend=0.498", headers=deadline)
    assert middleware.metrics()["deadline_exceeded"] == 1


@pytest.mark.anyio
async def test_a_timeout_policy_cutting_a_call_is_a_504() -> None:
    """A resilience.Timeout that cancels the handler's call: its error becomes the 504."""

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await resilience.Timeout(0.01).acall(anyio.sleep, 5)

    middleware = ASGIDeadlineMiddleware(handler)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="http://app"
    ) as client:
        response = await client.get("/", headers={"x-resilience-deadline-ms": "2000"})
    assert response.status_code == 504
    assert middleware.metrics()["deadline_exceeded"] == 1


@pytest.mark.anyio
async def test_the_transport_refusing_to_start_is_a_504() -> None:
    """No time left when the handler calls out: HTTPDeadlineExceededError, answered 504."""
    clock = FakeClock()
    called: list[httpx.Request] = []

    def payments(request: httpx.Request) -> httpx.Response:
        called.append(request)
        return httpx.Response(200)

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(1.0)  # the handler spent the whole budget
        transport = resilience.AsyncResilientTransport(
            httpx.MockTransport(payments), retry=False, breaker=False
        )
        async with httpx.AsyncClient(transport=transport) as downstream:
            await downstream.get("http://payments.test/pay")

    middleware = ASGIDeadlineMiddleware(handler, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="http://app"
    ) as client:
        response = await client.get("/", headers={"x-resilience-deadline-ms": "500"})
    assert response.status_code == 504
    assert called == []


@pytest.mark.anyio
async def test_a_deadline_answer_is_one_structlog_line() -> None:
    """With resilience.logging.install(): a `deadline.exceeded` warning under the name."""
    import resilience.logging

    lines: list[tuple[str, str, dict[str, Any]]] = []

    class Logger:
        def info(self, event: str, **fields: Any) -> None:
            lines.append(("info", event, fields))

        def warning(self, event: str, **fields: Any) -> None:
            lines.append(("warning", event, fields))

    undo = resilience.logging.install(Logger())
    try:
        client, _ = asgi(lambda request: resilience.DeadlineExceededError(), name="orders-log")
        async with client:
            await client.get("/", headers={"x-resilience-deadline-ms": "800"})
    finally:
        undo()
    fields = {"name": "orders-log", "suppressed": 0, "budget_seconds": 0.8}
    assert lines == [("warning", "deadline.exceeded", fields)]


def test_default_names() -> None:
    """Metrics and events name them "asgi", "wsgi" (and "starlette" for the handlers)."""
    from starlette.applications import Starlette

    import resilience.starlette

    assert ASGIDeadlineMiddleware(raising(NotOurs)).name == "asgi"
    assert WSGIDeadlineMiddleware(wsgi_raising(NotOurs())).name == "wsgi"
    assert resilience.starlette.install_exception_handlers(Starlette()).name == "starlette"


def test_wsgi_errors_of_a_lazy_body_are_not_mapped() -> None:
    """A body generated while the server iterates it: its errors reach the server."""

    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first part, "
        raise resilience.DeadlineExceededError()

    middleware = WSGIDeadlineMiddleware(lazy)
    body = iter(middleware({"HTTP_X_RESILIENCE_DEADLINE_MS": "800"}, Recorder()))
    assert next(body) == b"first part, "
    with pytest.raises(resilience.DeadlineExceededError):
        next(body)
    assert middleware.metrics()["deadline_exceeded"] == 0


# -- exception groups, Retry-After bounds, work after the response -----------------------------

SHED = resilience.BulkheadFullError("pool", 4)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ExceptionGroup("fan-out", [resilience.DeadlineExceededError(), SHED]), 504),
        (ExceptionGroup("fan-out", [SHED, SHED]), 503),
        (
            ExceptionGroup(
                "outer", [ExceptionGroup("inner", [resilience.DeadlineExceededError()])]
            ),
            504,
        ),
    ],
    ids=["deadline-and-shed", "all-shed", "nested"],
)
async def test_a_group_of_answered_errors_is_answered(error: Exception, status: int) -> None:
    """A route that fanned out (TaskGroup): answered when every error in the group is."""
    client, _middleware = asgi(lambda request: error)
    async with client:
        response = await client.get("/", headers={"x-resilience-deadline-ms": "800"})
    assert response.status_code == status


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(math.inf, "86400"), (1e300, "86400"), (math.nan, "1"), (2.2, "3")],
)
async def test_retry_after_is_finite_and_at_most_a_day(retry_after: float, header: str) -> None:
    """retry_after inf or 1e300 answers a one-day Retry-After; NaN the default."""
    error = resilience.CircuitOpenError("payments", OPEN, retry_after)
    client, _ = asgi(lambda request: error)
    async with client:
        response = await client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == header


@pytest.mark.anyio
async def test_work_after_the_response_is_not_bound_by_the_deadline() -> None:
    """Background tasks run after the response is complete: no caller deadline any more."""
    seen: list[float | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(resilience.remaining())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done", "more_body": False})
        seen.append(resilience.remaining())  # what a BackgroundTask sees

    _sent, raised = await _call(ASGIDeadlineMiddleware(app))
    assert raised is None
    assert seen[0] is not None
    assert 0 < seen[0] <= 0.8
    assert seen[1] is None


def test_the_configured_retry_after_is_at_most_a_day_too() -> None:
    """The middleware's own `retry_after=` is bounded by MAX_RETRY_AFTER (a day) too.

    As before the error mapping moved to resilience/_refusals.py for the gRPC interceptors.
    """
    answers = ErrorAnswers(name="x", retry_after=1e9)
    answer = answers.answer(resilience.CircuitOpenError("x", resilience.State.OPEN, None), None)
    assert answer is not None
    assert ("retry-after", "86400") in answer.headers
