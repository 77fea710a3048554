from __future__ import annotations

import datetime
import json
import math
import threading
import wsgiref.simple_server
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.middleware import (
    ASGIDeadlineMiddleware,
    WSGIDeadlineMiddleware,
    parse_deadline_header,
)
from resilience.testing import FakeClock


@pytest.mark.parametrize(
    ("name", "value", "seconds"),
    [
        ("x-resilience-deadline-ms", "1500", 1.5),
        ("x-resilience-deadline-ms", " 20 ", 0.02),
        ("x-resilience-deadline-ms", "0", 0.0),
        ("x-envoy-expected-rq-timeout-ms", "250", 0.25),
        ("grpc-timeout", "2S", 2.0),
        ("grpc-timeout", "100m", 0.1),
        ("grpc-timeout", "3M", 180.0),
        ("grpc-timeout", "1H", 3600.0),
        ("grpc-timeout", "500u", 0.0005),
        ("grpc-timeout", "7n", 7e-9),
    ],
)
def test_well_formed_values(name: str, value: str, seconds: float) -> None:
    """Milliseconds for our header and Envoy's; gRPC's digits-and-unit format."""
    assert parse_deadline_header(name, value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-resilience-deadline-ms", "-5"),
        ("x-resilience-deadline-ms", "abc"),
        ("x-resilience-deadline-ms", "1e3"),
        ("x-resilience-deadline-ms", "1.5"),
        ("x-resilience-deadline-ms", "9" * 11),
        ("x-resilience-deadline-ms", ""),
        ("x-resilience-deadline-ms", "+5"),
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "5"),
        ("grpc-timeout", "5s"),
        ("grpc-timeout", "-1S"),
        ("grpc-timeout", "S"),
    ],
)
def test_malformed_values_are_refused(name: str, value: str) -> None:
    """Negative, non-numeric, fractional, over-long and unit-less values are not trusted."""
    assert parse_deadline_header(name, value) is None


async def report(request: Request) -> JSONResponse:
    return JSONResponse({"remaining": resilience.remaining()})


def asgi_client(
    clock: FakeClock, **options: Any
) -> tuple[httpx.AsyncClient, ASGIDeadlineMiddleware]:
    middleware = ASGIDeadlineMiddleware(
        Starlette(routes=[Route("/", report)]), clock=clock, **options
    )
    transport = httpx.ASGITransport(app=middleware)
    return httpx.AsyncClient(transport=transport, base_url="http://app"), middleware


async def remaining_seen(client: httpx.AsyncClient, headers: list[tuple[str, str]]) -> Any:
    response = await client.get("/", headers=headers)
    return response.status_code, response.json() if response.status_code == 200 else response.text


@pytest.mark.anyio
async def test_asgi_deadline_from_each_header() -> None:
    """The handler runs inside the caller's budget, whichever header carried it."""
    clock = FakeClock()
    middleware = ASGIDeadlineMiddleware(Starlette(routes=[Route("/", report)]), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="http://app"
    ) as client:
        for header, value, expected in [
            ("x-resilience-deadline-ms", "1500", 1.5),
            ("grpc-timeout", "2S", 2.0),
            ("x-envoy-expected-rq-timeout-ms", "250", 0.25),
        ]:
            response = await client.get("/", headers={header: value})
            assert response.json() == {"remaining": expected}
        response = await client.get("/")
        assert response.json() == {"remaining": None}
    assert middleware.metrics() == {
        "with_deadline": 3,
        "invalid": 0,
        "clamped": 0,
        "expired": 0,
        "deadline_exceeded": 0,
        "shed": 0,
    }


@pytest.mark.anyio
async def test_asgi_prefers_our_header_and_applies_the_margin() -> None:
    """Our header wins over gRPC's; the safety margin is kept back."""
    clock = FakeClock()
    client, _ = asgi_client(clock, safety_margin=0.1)
    async with client:
        status, body = await remaining_seen(
            client, [("grpc-timeout", "9S"), ("x-resilience-deadline-ms", "500")]
        )
    assert status == 200
    assert body["remaining"] == pytest.approx(0.4)


@pytest.mark.anyio
async def test_hostile_headers_are_ignored_and_counted() -> None:
    """Huge values are clamped; negative, garbage and repeated values are treated as absent."""
    clock = FakeClock()
    client, middleware = asgi_client(clock, max_seconds=10, default=2.0)
    async with client:
        assert (await remaining_seen(client, [("x-resilience-deadline-ms", "9999999999")]))[1] == {
            "remaining": 10.0
        }
        for hostile in (
            [("x-resilience-deadline-ms", "-1")],
            [("x-resilience-deadline-ms", "soon")],
            [("x-resilience-deadline-ms", "1"), ("x-resilience-deadline-ms", "99999")],
            [("grpc-timeout", "99999999H0")],
        ):
            assert (await remaining_seen(client, hostile))[1] == {"remaining": 2.0}
    assert middleware.metrics() == {
        "with_deadline": 1,
        "invalid": 4,
        "clamped": 1,
        "expired": 0,
        "deadline_exceeded": 0,
        "shed": 0,
    }


@pytest.mark.anyio
async def test_an_invalid_header_falls_through_to_the_next() -> None:
    """A malformed preferred header does not hide a valid one after it."""
    client, _ = asgi_client(FakeClock())
    async with client:
        body = (
            await remaining_seen(
                client, [("x-resilience-deadline-ms", "x"), ("grpc-timeout", "3S")]
            )
        )[1]
    assert body == {"remaining": 3.0}


@pytest.mark.anyio
async def test_expired_budget_is_answered_at_once() -> None:
    """A request whose caller has already given up gets 504 without running the handler."""
    clock = FakeClock()
    client, middleware = asgi_client(clock)
    async with client:
        status, text = await remaining_seen(client, [("x-resilience-deadline-ms", "0")])
    assert status == 504
    assert "deadline exceeded" in text
    assert middleware.metrics()["expired"] == 1
    lenient, _ = asgi_client(clock, reject_expired=False, expired_status=503)
    async with lenient:
        assert await remaining_seen(lenient, [("x-resilience-deadline-ms", "0")]) == (
            200,
            {"remaining": 0.0},
        )


@pytest.mark.anyio
async def test_margin_can_expire_a_short_budget() -> None:
    """A budget smaller than the safety margin counts as expired."""
    client, middleware = asgi_client(FakeClock(), safety_margin=0.05, expired_status=503)
    async with client:
        assert (await remaining_seen(client, [("x-resilience-deadline-ms", "20")]))[0] == 503
    assert middleware.metrics()["expired"] == 1


@pytest.mark.anyio
async def test_non_http_scopes_pass_through() -> None:
    """Lifespan and websocket scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await ASGIDeadlineMiddleware(app)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def wsgi_report(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.dumps({"remaining": resilience.remaining()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def test_wsgi_deadline_and_hostile_values() -> None:
    """The WSGI middleware reads the same headers, with the same distrust."""
    clock = FakeClock()
    middleware = WSGIDeadlineMiddleware(wsgi_report, clock=clock, max_seconds=5)
    with httpx.Client(
        transport=httpx.WSGITransport(app=middleware), base_url="http://app"
    ) as client:
        assert client.get("/", headers={"x-resilience-deadline-ms": "750"}).json() == {
            "remaining": 0.75
        }
        assert client.get("/", headers={"grpc-timeout": "1M"}).json() == {"remaining": 5.0}
        assert client.get("/", headers={"x-resilience-deadline-ms": "-3"}).json() == {
            "remaining": None
        }
        expired = client.get("/", headers={"x-resilience-deadline-ms": "0"})
        assert expired.status_code == 504
    assert middleware.metrics() == {
        "with_deadline": 3,
        "invalid": 1,
        "clamped": 1,
        "expired": 1,
        "deadline_exceeded": 0,
        "shed": 0,
    }


@pytest.fixture
def wsgi_server() -> Iterator[str]:
    """A real WSGI server (wsgiref) on a free loopback port."""

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    app = WSGIDeadlineMiddleware(wsgi_report, max_seconds=10)
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_wsgi_behind_a_real_server(wsgi_server: str) -> None:
    """A deadline sent by the transport arrives in a WSGI handler served by wsgiref."""
    transport = resilience.ResilientTransport(retry=False, breaker=False)
    with httpx.Client(transport=transport) as client, resilience.deadline(2.0):
        seen = client.get(f"{wsgi_server}/").json()["remaining"]
    assert 1.0 < seen <= 2.0


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_seconds": 0}, ValueError, "max_seconds="),
        ({"max_seconds": -1}, ValueError, "max_seconds="),
        ({"max_seconds": math.nan}, ValueError, "max_seconds="),
        ({"max_seconds": math.inf}, ValueError, "max_seconds="),
        ({"max_seconds": True}, TypeError, "max_seconds="),
        ({"max_seconds": "30"}, TypeError, "max_seconds="),
        ({"max_seconds": None}, TypeError, "max_seconds="),
        ({"default": -1}, ValueError, "default="),
        ({"default": 0}, ValueError, "default="),
        ({"default": math.nan}, ValueError, "default="),
        ({"default": True}, TypeError, "default="),
        ({"default": "2"}, TypeError, "default="),
        ({"default": 60, "max_seconds": 10}, ValueError, "default="),
        ({"safety_margin": -0.1}, ValueError, "safety_margin="),
        ({"safety_margin": math.nan}, ValueError, "safety_margin="),
        ({"safety_margin": False}, TypeError, "safety_margin="),
        ({"safety_margin": None}, TypeError, "safety_margin="),
        ({"safety_margin": 10, "max_seconds": 10}, ValueError, "safety_margin="),
        ({"reject_expired": "yes"}, TypeError, "reject_expired="),
        ({"reject_expired": 1}, TypeError, "reject_expired="),
        ({"reject_expired": None}, TypeError, "reject_expired="),
        ({"expired_status": 42}, ValueError, "expired_status="),
        ({"expired_status": 700}, ValueError, "expired_status="),
        ({"expired_status": True}, TypeError, "expired_status="),
        ({"expired_status": 504.0}, TypeError, "expired_status="),
        ({"expired_status": "504"}, TypeError, "expired_status="),
        ({"headers": "grpc-timeout"}, TypeError, "headers="),
        ({"headers": b"grpc-timeout"}, TypeError, "headers="),
        ({"headers": ["x-request-timeout"]}, ValueError, "headers="),
        ({"headers": []}, ValueError, "headers="),
        ({"headers": [1]}, TypeError, "headers="),
        ({"headers": [b"grpc-timeout"]}, TypeError, "headers="),
        ({"headers": None}, TypeError, "headers="),
        ({"clock": "clock"}, TypeError, "clock="),
    ],
)
def test_bad_configuration(options: dict[str, Any], error: type[Exception], match: str) -> None:
    """Both middlewares validate at construction, naming the parameter."""
    with pytest.raises(error, match=match):
        ASGIDeadlineMiddleware(report, **options)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        WSGIDeadlineMiddleware(wsgi_report, **options)


def test_apps_are_validated() -> None:
    """Not callable is refused; an async app handed to the WSGI middleware too."""
    with pytest.raises(TypeError, match="app"):
        ASGIDeadlineMiddleware(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="app"):
        WSGIDeadlineMiddleware(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ASGIDeadlineMiddleware"):
        WSGIDeadlineMiddleware(report)  # type: ignore[arg-type]


def test_seconds_options_take_a_timedelta() -> None:
    """max_seconds, default and safety_margin are seconds or datetime.timedelta."""
    middleware = ASGIDeadlineMiddleware(
        report,  # type: ignore[arg-type]
        max_seconds=datetime.timedelta(seconds=10),
        default=datetime.timedelta(seconds=2),
        safety_margin=datetime.timedelta(milliseconds=50),
    )
    assert (middleware.policy.max_seconds, middleware.policy.default) == (10.0, 2.0)
    assert middleware.policy.safety_margin == 0.05


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("x-foo", "100", ValueError, "name="),
        (b"grpc-timeout", "1S", TypeError, "name="),
        (None, "1S", TypeError, "name="),
        ("grpc-timeout", b"1S", TypeError, "value="),
        ("grpc-timeout", 1, TypeError, "value="),
    ],
)
def test_parse_deadline_header_validates_its_arguments(
    name: Any, value: Any, error: type[Exception], match: str
) -> None:
    """A header name it does not know, or non-strings, are errors (not a garbage value)."""
    with pytest.raises(error, match=match):
        parse_deadline_header(name, value)
    assert parse_deadline_header("GRPC-Timeout", "1S") == 1.0  # names are case-insensitive
