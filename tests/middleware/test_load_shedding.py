"""ASGI and WSGI load shedding: a request over the service's adaptive limit gets 503 + Retry-After.

Real servers on 127.0.0.1 under concurrent load (uvicorn, a threaded
wsgiref), and unit tests of exactly-once settling: a streamed response, an
overload answer, an exception, cancellation, a client gone, other scopes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

import resilience.prometheus as rp
from resilience import ConcurrencyLimit, Gradient2Limit, LimitAlgorithm, deadline
from resilience.middleware import (
    ASGIConcurrencyLimitMiddleware,
    WSGIConcurrencyLimitMiddleware,
)
from resilience.testing import FakeClock
from tests.servers import serve_in_thread

from .serving import serve_wsgi


class Recording(LimitAlgorithm):
    """A fixed limit that records every sample (window=None)."""

    def __init__(self, limit: int) -> None:
        super().__init__(initial_limit=limit, min_limit=limit, max_limit=limit, window=None)
        self.samples: list[tuple[float, bool]] = []

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        self.samples.append((rtt, dropped))
        return limit


def fixed(limit: int, clock: FakeClock | None = None, name: str = "server") -> ConcurrencyLimit:
    return ConcurrencyLimit(Recording(limit), name=name, clock=clock)


def counts(limit: ConcurrencyLimit) -> dict[str, int]:
    metrics = limit.metrics()
    return {key: metrics[key] for key in ("in_flight", "succeeded", "dropped", "ignored")}


class Gauge:
    """Requests inside the handler now, and the most ever."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def hammer(
    url: str, requests: int, release: threading.Event, shed: int
) -> list[tuple[int, float, str | None]]:
    """`requests` GETs at once from as many threads: (status, seconds, Retry-After).

    The admitted requests are held (their handler waits for `release`) until
    `shed` requests have been answered 503: the shedding happened while the
    slots were taken, whatever the machine's speed. Bounded: 10 s.
    """

    def one(_: int) -> tuple[int, float, str | None]:
        started = time.monotonic()
        response = httpx.get(url, timeout=10)
        return response.status_code, time.monotonic() - started, response.headers.get("retry-after")

    with ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(one, index) for index in range(requests)]
        answered = 0
        try:
            for future in as_completed(futures, timeout=10):
                if future.result()[0] == 503:
                    answered += 1
                if answered >= shed:
                    break
        finally:
            release.set()
        return [future.result(timeout=10) for future in futures]


# -- real servers -------------------------------------------------------------------------------


def test_asgi_under_load_never_exceeds_the_limit_and_sheds_the_rest_fast() -> None:
    gauge = Gauge()

    release = threading.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        gauge.enter()
        try:
            for _ in range(1000):  # held until the test has its 503s (10 s at most)
                if release.is_set():
                    break
                await asyncio.sleep(0.01)
        finally:
            gauge.leave()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    limit = fixed(3)
    app = ASGIConcurrencyLimitMiddleware(slow, limit=limit)
    with serve_in_thread(app) as url:
        results = hammer(url, 10, release, shed=7)
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert gauge.most <= 3
    assert len(ok) == 3
    assert len(shed) == 7  # all answered while the 3 admitted ones were still held
    assert {retry_after for _, _, retry_after in shed} == {"1"}
    assert app.metrics()["shed"] == 7
    assert counts(limit) == {"in_flight": 0, "succeeded": 3, "dropped": 0, "ignored": 0}
    assert limit.metrics()["rejected"] == 7


def test_wsgi_under_load_never_exceeds_the_limit_and_sheds_the_rest_fast() -> None:
    gauge = Gauge()

    release = threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        gauge.enter()
        try:
            release.wait(timeout=10)  # held until the test has its 503s
        finally:
            gauge.leave()
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    limit = fixed(3)
    app = WSGIConcurrencyLimitMiddleware(slow, limit=limit, retry_after=2.5)
    with serve_wsgi(app) as (url, _server):
        results = hammer(url, 10, release, shed=7)
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert gauge.most <= 3
    assert len(ok) == 3
    assert len(shed) == 7  # all answered while the 3 admitted ones were still held
    assert {retry_after for _, _, retry_after in shed} == {"3"}  # rounded up
    assert app.metrics()["shed"] == 7
    # wsgiref closes the body after the client has it: wait for the last close (bounded).
    give_up = time.monotonic() + 5
    while limit.in_flight and time.monotonic() < give_up:
        time.sleep(0.01)
    assert counts(limit) == {"in_flight": 0, "succeeded": 3, "dropped": 0, "ignored": 0}


def test_shed_requests_and_the_limit_are_exported_to_prometheus() -> None:
    registry = CollectorRegistry()
    rp.register(registry)
    limit = fixed(1, name="edge-limit")
    app = ASGIConcurrencyLimitMiddleware(answering(200), limit=limit, name="edge")
    held = limit.acquire()
    scope = {"type": "http", "headers": []}
    anyio.run(app, scope, nothing, Sent())
    held.release()
    assert (
        registry.get_sample_value(
            "resilience_middleware_responses_total", {"name": "edge", "outcome": "shed"}
        )
        == 1
    )
    assert registry.get_sample_value("resilience_concurrency_limit", {"name": "edge-limit"}) == 1
    assert (
        registry.get_sample_value("resilience_concurrency_rejected_total", {"name": "edge-limit"})
        == 1
    )


# -- exactly once: unit tests on asyncio and trio ------------------------------------------------


async def nothing() -> MutableMapping[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class Sent:
    """An ASGI `send` that keeps the messages; `fail_after` raises from that message on."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.messages: list[MutableMapping[str, Any]] = []
        self.fail_after = fail_after

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if self.fail_after is not None and len(self.messages) >= self.fail_after:
            raise OSError("the client went away")
        self.messages.append(message)


def answering(status: int, chunks: int = 1) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        for index in range(chunks):
            await send(
                {"type": "http.response.body", "body": b"x", "more_body": index < chunks - 1}
            )

    return app


HTTP = {"type": "http", "headers": []}


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "dropped"), [(200, 0), (500, 0), (429, 1), (503, 1)])
async def test_the_apps_answer_is_a_sample_or_a_drop(status: int, dropped: int) -> None:
    limit = fixed(2)
    await ASGIConcurrencyLimitMiddleware(answering(status), limit=limit)(
        dict(HTTP), nothing, Sent()
    )
    assert counts(limit) == {
        "in_flight": 0,
        "succeeded": 1 - dropped,
        "dropped": dropped,
        "ignored": 0,
    }


@pytest.mark.anyio
async def test_a_streamed_response_is_sampled_once_from_admission_to_its_last_chunk() -> None:
    clock = FakeClock()
    limit = fixed(2, clock)
    seen: list[int] = []

    async def streams(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            clock.advance(0.1)
            seen.append(limit.in_flight)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        clock.advance(5)  # after the response ended: not part of the latency
        seen.append(limit.in_flight)

    await ASGIConcurrencyLimitMiddleware(streams, limit=limit)(dict(HTTP), nothing, Sent())
    assert seen == [1, 1, 1, 0]
    assert limit.algorithm.samples == [(pytest.approx(0.3), False)]  # type: ignore[attr-defined]
    assert counts(limit) == {"in_flight": 0, "succeeded": 1, "dropped": 0, "ignored": 0}


@pytest.mark.anyio
async def test_errors_cancellation_and_a_client_gone_settle_once_without_a_sample() -> None:
    limit = fixed(2)

    async def fails(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await ASGIConcurrencyLimitMiddleware(fails, limit=limit)(dict(HTTP), nothing, Sent())

    async def hangs(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep(10)

    with anyio.move_on_after(0.05):
        await ASGIConcurrencyLimitMiddleware(hangs, limit=limit)(dict(HTTP), nothing, Sent())

    with pytest.raises(OSError, match="went away"):
        await ASGIConcurrencyLimitMiddleware(answering(200, chunks=3), limit=limit)(
            dict(HTTP), nothing, Sent(fail_after=2)
        )

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return  # answered nothing

    await ASGIConcurrencyLimitMiddleware(silent, limit=limit)(dict(HTTP), nothing, Sent())
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 0, "ignored": 4}


@pytest.mark.anyio
async def test_a_deadline_cut_in_the_handler_is_a_drop() -> None:
    limit = fixed(2)

    async def times_out(scope: Any, receive: Any, send: Any) -> None:
        with deadline(0.01):
            await anyio.sleep(0.05)
            raise TimeoutError("downstream")

    with pytest.raises(TimeoutError):
        await ASGIConcurrencyLimitMiddleware(times_out, limit=limit)(dict(HTTP), nothing, Sent())
    assert counts(limit)["dropped"] == 1


@pytest.mark.anyio
async def test_lifespan_and_websocket_scopes_pass_through_untouched() -> None:
    limit = fixed(1)
    held = limit.acquire()  # full: an HTTP request would be shed
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = ASGIConcurrencyLimitMiddleware(app, limit=limit)
    for kind in ("lifespan", "websocket"):
        await middleware({"type": kind}, nothing, Sent())
    sent = Sent()
    await middleware(dict(HTTP), nothing, sent)
    held.release()
    assert seen == ["lifespan", "websocket"]
    assert sent.messages[0]["status"] == 503
    assert (b"retry-after", b"1") in sent.messages[0]["headers"]
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 0, "ignored": 1}


@pytest.mark.anyio
async def test_a_wait_for_a_slot_admits_when_one_frees_up() -> None:
    limit = ConcurrencyLimit(Recording(1), max_wait=2.0)
    middleware = ASGIConcurrencyLimitMiddleware(answering(200), limit=limit)
    held = await limit.aacquire()
    sent = Sent()
    async with anyio.create_task_group() as group:
        group.start_soon(middleware, dict(HTTP), nothing, sent)
        await anyio.sleep(0.05)
        assert limit.waiting == 1
        held.release()
    assert sent.messages[0]["status"] == 200
    assert middleware.metrics()["shed"] == 0


# -- WSGI units and validation ----------------------------------------------------------------


def call_wsgi(app: Any) -> tuple[list[str], list[bytes]]:
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    body = app({"REQUEST_METHOD": "GET"}, start_response)
    try:
        chunks = list(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return statuses, chunks


def test_wsgi_settles_when_the_body_is_closed_drops_on_503_and_ignores_errors() -> None:
    limit = fixed(2)
    seen: list[int] = []

    def lazy(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        seen.append(limit.in_flight)  # still held while the body is iterated
        yield b"b"

    assert call_wsgi(WSGIConcurrencyLimitMiddleware(lazy, limit=limit)) == (
        ["200 OK"],
        [b"a", b"b"],
    )
    assert seen == [1]

    def busy(environ: Any, start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [])
        return [b"busy"]

    call_wsgi(WSGIConcurrencyLimitMiddleware(busy, limit=limit))

    def broken(environ: Any, start_response: Any) -> list[bytes]:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        call_wsgi(WSGIConcurrencyLimitMiddleware(broken, limit=limit))
    assert counts(limit) == {"in_flight": 0, "succeeded": 1, "dropped": 1, "ignored": 1}


def test_the_default_limit_is_gradient2_named_after_the_middleware() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    middleware = ASGIConcurrencyLimitMiddleware(app, name="orders")
    assert isinstance(middleware.limit.algorithm, Gradient2Limit)
    assert middleware.limit.name == "orders"
    assert WSGIConcurrencyLimitMiddleware(lambda e, s: [], name="w").limit.name == "w"


def test_parameters_are_validated() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(TypeError, match=r"limit= must be a resilience\.ConcurrencyLimit"):
        ASGIConcurrencyLimitMiddleware(app, limit=Gradient2Limit())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drop_statuses"):
        ASGIConcurrencyLimitMiddleware(app, drop_statuses=[700])
    with pytest.raises(TypeError, match="drop_statuses"):
        ASGIConcurrencyLimitMiddleware(app, drop_statuses="503")
    with pytest.raises(ValueError, match="shed_status"):
        ASGIConcurrencyLimitMiddleware(app, shed_status=99)
    with pytest.raises(ValueError, match="retry_after"):
        WSGIConcurrencyLimitMiddleware(lambda e, s: [], retry_after=-1)
    with pytest.raises(TypeError, match="ASGI application"):
        ASGIConcurrencyLimitMiddleware(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use ASGIConcurrencyLimitMiddleware"):
        WSGIConcurrencyLimitMiddleware(app)  # type: ignore[arg-type]
