"""AsyncResilientTransport on asyncio and trio, against the real loopback server."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

import resilience
from resilience import AsyncResilientTransport, CircuitBreaker, CircuitOpenError

from .conftest import LiveServer
from .test_transport import fast_retry

pytestmark = pytest.mark.anyio


def key() -> str:
    return uuid.uuid4().hex


def client(**options) -> httpx.AsyncClient:
    options.setdefault("retry", fast_retry())
    return httpx.AsyncClient(transport=AsyncResilientTransport(**options))


async def test_get_is_retried_until_it_succeeds(server: LiveServer) -> None:
    """Two 503s, then 200, through the async client."""
    async with client() as http:
        response = await http.get(f"{server.url}/flaky/{key()}?fails=2")
    assert response.status_code == 200
    assert response.extensions["resilience"]["attempts"] == 3


async def test_pool_of_one_connection_survives_retried_requests(server: LiveServer) -> None:
    """30 retried requests through one pooled connection: nothing leaks."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with client(limits=limits, breaker=False) as http:
        for _ in range(30):
            response = await http.get(f"{server.url}/flaky/{key()}?fails=1", timeout=5)
            assert response.status_code == 200


async def test_async_generator_body_is_not_retried(server: LiveServer) -> None:
    """A one-shot async body is sent once, whole."""
    name = key()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a,"
        yield b"b"

    async with client() as http:
        response = await http.put(f"{server.url}/flaky/{name}?fails=1", content=chunks())
    assert response.status_code == 503
    assert [r["body"] for r in server.recorder.requests if r["key"] == name] == [b"a,b"]


async def test_generated_idempotency_key_is_reused(server: LiveServer) -> None:
    """POST with idempotency_key=True is retried with one key."""
    name = key()
    async with client(idempotency_key=True) as http:
        response = await http.post(f"{server.url}/flaky/{name}?fails=1", content=b"x")
    assert response.status_code == 200
    keys = {r["idempotency_key"] for r in server.recorder.requests if r["key"] == name}
    assert len(keys) == 1


async def test_body_phase_error_settles_the_permit_as_a_failure(server: LiveServer) -> None:
    """A ReadTimeout while streaming the body counts against the breaker, once."""
    breaker = CircuitBreaker("async-stall", consecutive_failures=100)
    async with (
        client(breaker=breaker, retry=False) as http,
        http.stream("GET", f"{server.url}/stall?seconds=2", timeout=0.2) as response,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()
    assert breaker.metrics().calls["failure"] == 1
    assert breaker.metrics().calls["success"] == 0


async def test_deadline_clamps_the_attempt(server: LiveServer) -> None:
    """Inside deadline(0.3) a 2 s response times out at ~0.3 s."""
    async with client(retry=False) as http:
        start = time.monotonic()
        with resilience.deadline(0.3), pytest.raises(resilience.HTTPDeadlineExceededError) as cut:
            await http.get(f"{server.url}/slow?seconds=2", timeout=10)
    assert time.monotonic() - start < 1.5
    assert isinstance(cut.value.__cause__, httpx.ReadTimeout)


async def test_open_breaker_is_an_httpx_error() -> None:
    """Rejections are CircuitOpenError and httpx.TransportError."""
    breaker = CircuitBreaker("async-open", consecutive_failures=1)
    breaker.force_open()
    transport = AsyncResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), breaker=breaker
    )
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.TransportError) as caught:
            await http.get("http://api.test/")
    assert isinstance(caught.value, CircuitOpenError)


async def test_aclose_is_forwarded() -> None:
    """Closing the client closes the inner async transport."""
    closed: list[bool] = []

    class Inner(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    transport = AsyncResilientTransport(Inner(lambda request: httpx.Response(200)))
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get("http://api.test/")).status_code == 200
    assert closed == [True]


async def test_bad_async_configuration() -> None:
    """The async transport validates like the sync one."""
    with pytest.raises(TypeError, match="transport="):
        AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempt_timeout="):
        AsyncResilientTransport(attempt_timeout=10, total_timeout=1)


async def test_async_attempts_send_copies_and_in_memory_bodies_settle_at_once() -> None:
    """The caller's request is unchanged; a body already in memory settles the permit on return."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"ok")

    breaker = CircuitBreaker("async-copies")
    transport = AsyncResilientTransport(httpx.MockTransport(record), breaker=breaker)
    request = httpx.Request("GET", "http://api.test/")
    response = await transport.handle_async_request(request)
    assert breaker.metrics().calls["success"] == 1  # before the body is read
    assert sent[0] is not request
    assert resilience.DEADLINE_HEADER in sent[0].headers
    assert resilience.DEADLINE_HEADER not in request.headers
    assert await response.aread() == b"ok"


async def test_a_sync_transports_retry_serves_an_async_transport() -> None:
    """One Retry shared by a sync and an async transport discards with the right hook."""
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls == 1 else 200, content=b"body")

    sync = resilience.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), retry=fast_retry()
    )
    assert sync.retry is not None
    transport = AsyncResilientTransport(httpx.MockTransport(flaky), retry=sync.retry)
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.post(
            "http://api.test/", content=b"x", extensions={"resilience": {"retry": True}}
        )
    assert response.status_code == 200
    assert response.extensions["resilience"]["attempts"] == 2


async def test_async_inner_transport_can_read_request_content() -> None:
    """Every attempt's copy keeps a body built in memory readable as request.content."""
    seen: list[bytes] = []

    class Signing(httpx.AsyncBaseTransport):  # reads .content first, as signing transports do
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.content)
            return httpx.Response(503 if len(seen) == 1 else 200)

    transport = AsyncResilientTransport(Signing(), retry=fast_retry())
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.put("http://api.test/", json={"a": 1})
    assert response.status_code == 200
    assert seen == [b'{"a":1}', b'{"a":1}']
