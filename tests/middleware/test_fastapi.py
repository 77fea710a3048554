"""FastAPI (and so Starlette): what the middleware alone does, and when the handlers are needed.

Starlette's stack, outermost first: ServerErrorMiddleware, user middleware
(`add_middleware`), ExceptionMiddleware (exception handlers), the routes.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import resilience
import resilience.starlette
from resilience.middleware import ASGIDeadlineMiddleware
from resilience.testing import FakeClock
from tests.middleware.serving import captured_logs
from tests.servers import serve_in_thread

OPEN = resilience.State.OPEN


def service(clock: FakeClock | None = None) -> FastAPI:
    """Routes that fail the ways a service author meets, async and sync."""
    app = FastAPI()

    @app.get("/deadline")
    async def deadline() -> dict[str, str]:
        raise resilience.DeadlineExceededError("payments", 0.5)

    @app.get("/deadline-sync")
    def deadline_sync() -> dict[str, str]:
        raise resilience.DeadlineExceededError("payments", 0.5)

    @app.get("/open")
    async def open_breaker() -> dict[str, str]:
        raise resilience.CircuitOpenError("payments", OPEN, 4.2)

    @app.get("/full")
    def full() -> dict[str, str]:
        raise resilience.BulkheadFullError("pool", 8)

    @app.get("/timeout")
    async def timeout(spend: float = 0.0) -> dict[str, str]:
        if clock is not None:
            clock.advance(spend)
        raise httpx.ReadTimeout("timed out")

    @app.get("/bug")
    async def bug() -> dict[str, str]:
        raise ZeroDivisionError

    return app


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://app")


@pytest.mark.anyio
async def test_add_middleware_alone_is_enough() -> None:
    """add_middleware puts it inside ServerErrorMiddleware: route errors reach it first."""
    app = service()
    app.add_middleware(ASGIDeadlineMiddleware)
    async with client(app) as http:
        assert (await http.get("/deadline")).status_code == 504
        assert (await http.get("/deadline-sync")).status_code == 504
        shed = await http.get("/open")
        assert (await http.get("/full")).status_code == 503
        assert (await http.get("/bug")).status_code == 500  # not ours: ServerErrorMiddleware
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "5"


@pytest.mark.anyio
async def test_wrapped_around_the_whole_app_the_middleware_is_too_late() -> None:
    """Outside ServerErrorMiddleware, a 500 has started before the error reaches it."""
    async with client(ASGIDeadlineMiddleware(service())) as http:
        assert (await http.get("/deadline")).status_code == 500
    app = service()
    resilience.starlette.install_exception_handlers(app)  # the handlers fix that
    async with client(ASGIDeadlineMiddleware(app)) as http:
        assert (await http.get("/deadline")).status_code == 504


@pytest.mark.anyio
async def test_exception_handlers_alone() -> None:
    """Without the middleware: the same answers, from Starlette's ExceptionMiddleware."""
    app = service()
    answers = resilience.starlette.install_exception_handlers(app)
    async with client(app) as http:
        deadline = await http.get("/deadline")
        assert (await http.get("/deadline-sync")).status_code == 504
        shed = await http.get("/open")
        full = await http.get("/full")
        # No request deadline, so an httpx timeout is not the deadline's: re-raised, a 500.
        assert (await http.get("/timeout")).status_code == 500
        assert (await http.get("/bug")).status_code == 500
    assert deadline.status_code == 504
    assert deadline.text == "deadline exceeded: no time was left to finish the request\n"
    assert deadline.headers["content-type"] == "text/plain; charset=utf-8"
    assert (shed.status_code, shed.headers["retry-after"]) == (503, "5")
    assert (full.status_code, full.headers["retry-after"]) == (503, "1")
    assert answers.metrics() == {"deadline_exceeded": 2, "shed": 2}


@pytest.mark.anyio
async def test_handlers_read_the_middlewares_deadline() -> None:
    """With both: an httpx timeout after the request's deadline is a 504, counted once."""
    clock = FakeClock()
    app = service(clock)
    app.add_middleware(ASGIDeadlineMiddleware, clock=clock)
    answers = resilience.starlette.install_exception_handlers(app)
    deadline = {"x-resilience-deadline-ms": "500"}
    async with client(app) as http:
        assert (await http.get("/timeout?spend=0.5", headers=deadline)).status_code == 504
        assert (await http.get("/timeout?spend=0.1", headers=deadline)).status_code == 500
    middleware = app.middleware_stack
    while not isinstance(middleware, ASGIDeadlineMiddleware):
        middleware = middleware.app  # type: ignore[union-attr]
    # The handler answered (innermost): the middleware saw a response, not an error.
    assert answers.metrics()["deadline_exceeded"] == 1
    assert middleware.metrics()["deadline_exceeded"] == 0


@pytest.mark.anyio
async def test_handlers_beat_an_inner_catch_all_middleware() -> None:
    """A middleware of yours inside ours that turns errors into 500s hides them; handlers don't."""

    def build(handlers: bool) -> FastAPI:
        app = service()

        @app.middleware("http")
        async def catch_all(request: Request, call_next: Any) -> Any:
            try:
                return await call_next(request)
            except Exception:
                return JSONResponse({"error": "internal"}, status_code=500)

        app.add_middleware(ASGIDeadlineMiddleware)  # added last: outermost of the two
        if handlers:
            resilience.starlette.install_exception_handlers(app)
        return app

    async with client(build(handlers=False)) as http:
        assert (await http.get("/deadline")).status_code == 500
    async with client(build(handlers=True)) as http:
        assert (await http.get("/deadline")).status_code == 504


@pytest.mark.anyio
async def test_a_handler_for_a_subclass_still_wins() -> None:
    """The app's own handler for httpx.ReadTimeout is more specific than ours."""
    app = service()

    async def own(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"mine": True}, status_code=502)

    app.add_exception_handler(httpx.ReadTimeout, own)
    resilience.starlette.install_exception_handlers(app)
    async with client(app) as http:
        assert (await http.get("/timeout")).status_code == 502


@pytest.mark.anyio
async def test_handler_statuses_are_configurable() -> None:
    """deadline_status, shed_status and retry_after, as for the middleware."""
    app = service()
    resilience.starlette.install_exception_handlers(
        app, deadline_status=503, shed_status=429, retry_after=10
    )
    async with client(app) as http:
        assert (await http.get("/deadline")).status_code == 503
        full = await http.get("/full")
    assert (full.status_code, full.headers["retry-after"]) == (429, "10")


@pytest.mark.parametrize(
    ("app", "options", "error", "match"),
    [
        (object(), {}, TypeError, "app must be a Starlette or FastAPI"),
        (None, {}, TypeError, "app must be a Starlette or FastAPI"),
        (FastAPI(), {"deadline_status": 42}, ValueError, "deadline_status="),
        (FastAPI(), {"shed_status": "503"}, TypeError, "shed_status="),
        (FastAPI(), {"retry_after": 0}, ValueError, "retry_after="),
        (FastAPI(), {"name": ""}, ValueError, "name="),
    ],
)
def test_install_validates(
    app: Any, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """A wrong app or a bad parameter is refused before anything is installed."""
    with pytest.raises(error, match=match):
        resilience.starlette.install_exception_handlers(app, **options)
    if isinstance(app, FastAPI):
        assert app.exception_handlers.keys().isdisjoint(resilience.starlette.HANDLED)


def test_fastapi_under_uvicorn_logs_no_traceback() -> None:
    """A real server: 504 and 503 from a FastAPI app with the middleware, nothing logged."""
    app = service()
    app.add_middleware(ASGIDeadlineMiddleware)
    with serve_in_thread(app) as url, captured_logs() as logs, httpx.Client() as http:
        statuses = [
            http.get(f"{url}{path}").status_code for path in ("/deadline", "/open", "/full")
        ]
        time.sleep(0.05)  # a server logs after it answered: give it the chance
    assert statuses == [504, 503, 503]
    assert logs.errors() == []
