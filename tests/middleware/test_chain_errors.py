"""Real servers on 127.0.0.1: what a caller gets when a chain runs out of time or sheds load.

gateway -> orders -> payments, payments hangs. Every handler is written the
way a service author writes it at first: no try/except around the downstream
call. The middleware turns the deadline's httpx timeout into a 504 (ASGI
under uvicorn, WSGI under wsgiref), an open breaker or a full bulkhead into a
503 with Retry-After; nothing is logged with a traceback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import resilience
from resilience.middleware import ASGIDeadlineMiddleware, WSGIDeadlineMiddleware
from tests.middleware.serving import captured_logs, serve_wsgi
from tests.servers import serve_in_thread

pytestmark = pytest.mark.slow

MARGIN = 0.05
DEADLINE = 0.6
HANG_LIMIT = 3.0  # a hanging handler gives up after this, whatever happens


class Statuses:
    """An outermost ASGI wrapper recording the status each service answered with."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {}

    def wrap(self, name: str, app: Any) -> Any:
        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            async def watch(message: Any) -> None:
                if message["type"] == "http.response.start":
                    self.seen.setdefault(name, []).append(message["status"])
                await send(message)

            await app(scope, receive, watch)

        return recorded


def find_middleware(app: Starlette) -> ASGIDeadlineMiddleware:
    """The middleware instance Starlette built (on the first request)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, ASGIDeadlineMiddleware):
        layer = layer.app
    return layer


def payments_app(release: threading.Event) -> Starlette:
    async def pay(request: Request) -> JSONResponse:
        if request.query_params.get("hang") == "1":
            give_up = time.monotonic() + HANG_LIMIT
            while not release.is_set() and time.monotonic() < give_up:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # `release` is set from another thread
        return JSONResponse({"paid": True})

    return Starlette(
        routes=[Route("/pay", pay)],
        middleware=[Middleware(ASGIDeadlineMiddleware, safety_margin=MARGIN, name="payments")],
    )


def relay_app(name: str, path: str, downstream: str, **calls: Any) -> Starlette:
    """A service that calls `downstream` with no error handling of its own."""
    options = calls.pop("transport", {})
    bulkhead: resilience.Bulkhead | None = calls.pop("bulkhead", None)

    async def handle(request: Request) -> Response:
        transport = resilience.AsyncResilientTransport(retry=False, **options)
        async with httpx.AsyncClient(transport=transport) as client:
            if bulkhead is not None:
                async with bulkhead:
                    reply = await client.get(downstream, params=request.query_params)
            else:
                reply = await client.get(downstream, params=request.query_params)
        # A proxy: whatever came back goes up, status and body.
        return Response(reply.content, reply.status_code, media_type=reply.headers["content-type"])

    return Starlette(
        routes=[Route(path, handle)],
        middleware=[Middleware(ASGIDeadlineMiddleware, safety_margin=MARGIN, name=name)],
    )


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: a hanging payments handler returns at once."""
    event = threading.Event()
    yield event
    event.set()


def test_asgi_chain_answers_504_within_the_deadline(release: threading.Event) -> None:
    """Payments hangs: the client gets a 504 within its deadline + 50 ms; no 500, no traceback."""
    statuses = Statuses()
    apps = {"payments": payments_app(release)}
    with ExitStack() as stack:
        payments = stack.enter_context(serve_in_thread(statuses.wrap("payments", apps["payments"])))
        apps["orders"] = relay_app("orders", "/order", f"{payments}/pay")
        orders = stack.enter_context(serve_in_thread(statuses.wrap("orders", apps["orders"])))
        apps["gateway"] = relay_app("gateway", "/checkout", f"{orders}/order")
        gateway = stack.enter_context(serve_in_thread(statuses.wrap("gateway", apps["gateway"])))
        stack.callback(release.set)  # first thing at exit: hangs end
        logs = stack.enter_context(captured_logs())
        with httpx.Client(transport=resilience.ResilientTransport(retry=False)) as client:
            assert client.get(f"{gateway}/checkout").status_code == 200  # the chain works
            started = time.monotonic()
            with resilience.deadline(DEADLINE):
                response = client.get(f"{gateway}/checkout", params={"hang": "1"})
            elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.text == "deadline exceeded: no time was left to finish the request\n"
        assert elapsed < DEADLINE + 0.05
        # Orders ran out of time waiting on payments: its middleware answered 504
        # for the transport's httpx timeout; the gateway relayed it.
        assert statuses.seen["orders"] == [200, 504]
        assert statuses.seen["gateway"] == [200, 504]
        assert find_middleware(apps["orders"]).metrics()["deadline_exceeded"] == 1
        assert find_middleware(apps["gateway"]).metrics()["deadline_exceeded"] == 0
        assert logs.errors() == []
    assert 500 not in {status for seen in statuses.seen.values() for status in seen}


def test_asgi_503_when_the_downstream_breaker_is_open(release: threading.Event) -> None:
    """Orders' breaker for payments is open: 503 with Retry-After from the breaker's time left."""
    breaker = resilience.CircuitBreaker("payments", consecutive_failures=1, open_duration=6.5)
    with ExitStack() as stack:
        payments = stack.enter_context(serve_in_thread(payments_app(release)))
        orders_app = relay_app(
            "orders", "/order", f"{payments}/pay", transport={"breaker": breaker}
        )
        orders = stack.enter_context(serve_in_thread(orders_app))
        stack.callback(release.set)  # first thing at exit: hangs end
        logs = stack.enter_context(captured_logs())
        breaker.acquire().record_failure()  # payments failed once: the breaker opens
        with httpx.Client() as client:
            response = client.get(f"{orders}/order", headers={"x-resilience-deadline-ms": "900"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"  # 6.5 s less a few ms, rounded up
        assert response.text == "temporarily unable to handle the request; retry later\n"
        assert find_middleware(orders_app).metrics()["shed"] == 1
        assert logs.errors() == []


def test_asgi_503_when_a_bulkhead_is_full(release: threading.Event) -> None:
    """Orders allows one call to payments at a time: the second concurrent request gets 503."""
    bulkhead = resilience.Bulkhead(1, name="payments-pool")
    with ExitStack() as stack:
        payments = stack.enter_context(serve_in_thread(payments_app(release)))
        orders_app = relay_app("orders", "/order", f"{payments}/pay", bulkhead=bulkhead)
        orders = stack.enter_context(serve_in_thread(orders_app))
        stack.callback(release.set)  # first thing at exit: hangs end
        logs = stack.enter_context(captured_logs())
        with httpx.Client(timeout=5) as first, httpx.Client(timeout=5) as second:
            holder = threading.Thread(target=first.get, args=(f"{orders}/order?hang=1",))
            holder.start()
            give_up = time.monotonic() + 3
            while bulkhead.metrics()["in_flight"] == 0 and time.monotonic() < give_up:
                time.sleep(0.005)
            response = second.get(f"{orders}/order")
            release.set()
            holder.join(timeout=5)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"  # a bulkhead does not know: the default
        assert find_middleware(orders_app).metrics()["shed"] == 1
        assert logs.errors() == []


class NotOurs(Exception):
    pass


def test_asgi_other_errors_still_reach_the_server() -> None:
    """An exception that is not ours is not swallowed: a 500 from the server, logged by it."""
    seen: list[BaseException] = []

    async def broken(request: Request) -> Response:
        raise NotOurs("a bug in the handler")

    class Spy:
        """Outside the deadline middleware: sees what it lets through."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                seen.append(exc)
                raise

    app = Starlette(
        routes=[Route("/", broken)],
        middleware=[Middleware(Spy), Middleware(ASGIDeadlineMiddleware)],
    )
    with serve_in_thread(app) as url, captured_logs() as logs, httpx.Client() as client:
        response = client.get(url, headers={"x-resilience-deadline-ms": "900"})
        # uvicorn logged it with its traceback: the capture works, and this one is not ours.
        assert logs.wait_for(NotOurs)
    assert response.status_code == 500
    assert [type(exc) for exc in seen] == [NotOurs]
    assert any("Exception in ASGI application" in line for line in logs.errors())


def test_asgi_error_after_the_response_started_is_left_to_the_server() -> None:
    """A deadline error mid-body: the middleware re-raises; uvicorn cuts the response."""

    async def body() -> Any:
        yield b"first part, "
        raise resilience.DeadlineExceededError("late", 0.1)

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(body(), media_type="text/plain")

    app = Starlette(routes=[Route("/", stream)], middleware=[Middleware(ASGIDeadlineMiddleware)])
    with serve_in_thread(app) as url, captured_logs() as logs, httpx.Client() as client:
        with pytest.raises(httpx.RemoteProtocolError):  # the body was cut short
            client.get(url, headers={"x-resilience-deadline-ms": "900"})
        # uvicorn, not the middleware, handled it: logged with its traceback.
        assert logs.wait_for(resilience.DeadlineExceededError)
    assert find_middleware(app).metrics()["deadline_exceeded"] == 0


# --- WSGI -------------------------------------------------------------------------------------


def wsgi_payments(release: threading.Event) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if "hang=1" in environ.get("QUERY_STRING", ""):
            release.wait(HANG_LIMIT)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"paid": true}']

    return app


def wsgi_relay(downstream: str, **options: Any) -> WSGIDeadlineMiddleware:
    """A WSGI service calling `downstream` through ResilientTransport, no error handling."""
    transport = resilience.ResilientTransport(retry=False, **options)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = environ.get("QUERY_STRING", "")
        with httpx.Client(transport=transport) as client:
            reply = client.get(f"{downstream}?{query}")
        start_response(
            f"{reply.status_code} {reply.reason_phrase}",
            [("Content-Type", reply.headers["content-type"])],
        )
        return [reply.content]

    return WSGIDeadlineMiddleware(app, safety_margin=MARGIN)


def test_wsgi_chain_answers_504_within_the_deadline(release: threading.Event) -> None:
    """The same chain under wsgiref: 504 within the deadline + 50 ms, no traceback, no 500."""
    with ExitStack() as stack:
        payments, payments_server = stack.enter_context(
            serve_wsgi(WSGIDeadlineMiddleware(wsgi_payments(release), safety_margin=MARGIN))
        )
        orders_app = wsgi_relay(f"{payments}/pay")
        orders, orders_server = stack.enter_context(serve_wsgi(orders_app))
        gateway_app = wsgi_relay(f"{orders}/order")
        gateway, gateway_server = stack.enter_context(serve_wsgi(gateway_app))
        stack.callback(release.set)  # first thing at exit: hangs end
        logs = stack.enter_context(captured_logs())
        with httpx.Client(transport=resilience.ResilientTransport(retry=False)) as client:
            assert client.get(f"{gateway}/checkout").status_code == 200
            started = time.monotonic()
            with resilience.deadline(DEADLINE):
                response = client.get(f"{gateway}/checkout", params={"hang": "1"})
            elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.text == "deadline exceeded: no time was left to finish the request\n"
        assert elapsed < DEADLINE + 0.05
        assert orders_app.metrics()["deadline_exceeded"] == 1
        assert logs.errors() == []
        # wsgiref prints an application's traceback to wsgi.errors and answers 500: neither.
        for server in (payments_server, orders_server, gateway_server):
            assert server.errors.getvalue() == ""


def test_wsgi_503_when_the_downstream_breaker_is_open(release: threading.Event) -> None:
    """A WSGI service whose breaker for payments is open answers 503 + Retry-After."""
    breaker = resilience.CircuitBreaker("payments", consecutive_failures=1, open_duration=2.2)
    with ExitStack() as stack:
        payments, _ = stack.enter_context(serve_wsgi(wsgi_payments(release)))
        orders_app = wsgi_relay(f"{payments}/pay", breaker=breaker)
        orders, orders_server = stack.enter_context(serve_wsgi(orders_app))
        breaker.acquire().record_failure()
        with httpx.Client() as client:
            response = client.get(f"{orders}/order")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "3"
        assert orders_app.metrics()["shed"] == 1
        assert orders_server.errors.getvalue() == ""


def test_wsgi_other_errors_reach_the_server() -> None:
    """Not ours: wsgiref reports it (traceback on wsgi.errors) and answers 500."""

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise NotOurs("a bug in the handler")

    with serve_wsgi(WSGIDeadlineMiddleware(broken)) as (url, server), httpx.Client() as client:
        response = client.get(url)
    assert response.status_code == 500
    assert "NotOurs: a bug in the handler" in server.errors.getvalue()


def test_wsgi_error_after_the_app_started_its_response_is_replaced() -> None:
    """The app called start_response, then failed: wsgiref takes the 504 instead (PEP 3333)."""

    def late(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        raise resilience.DeadlineExceededError()

    with serve_wsgi(WSGIDeadlineMiddleware(late)) as (url, server), httpx.Client() as client:
        response = client.get(url)
    assert response.status_code == 504
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert server.errors.getvalue() == ""


def test_a_plain_httpx_client_timed_by_remaining_is_a_504(release: threading.Event) -> None:
    """No resilient transport: httpx's own timeout, set to remaining(), still ends in a 504."""

    async def orders(request: Request) -> Response:
        async with httpx.AsyncClient(timeout=resilience.remaining()) as client:
            reply = await client.get(f"{request.app.state.payments}/pay?hang=1")
        return Response(reply.content, reply.status_code)

    app = Starlette(
        routes=[Route("/order", orders)], middleware=[Middleware(ASGIDeadlineMiddleware)]
    )
    with ExitStack() as stack:
        app.state.payments = stack.enter_context(serve_in_thread(payments_app(release)))
        url = stack.enter_context(serve_in_thread(app))
        stack.callback(release.set)  # first thing at exit: hangs end
        logs = stack.enter_context(captured_logs())
        with httpx.Client() as client:
            response = client.get(f"{url}/order", headers={"x-resilience-deadline-ms": "300"})
        assert response.status_code == 504
        assert find_middleware(app).metrics()["deadline_exceeded"] == 1
        assert logs.errors() == []
