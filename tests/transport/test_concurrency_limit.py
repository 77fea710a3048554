"""The transports' `concurrency_limit=`: an adaptive limit per origin around each attempt.

Every attempt takes a limit permit inside its breaker permit and settles it
exactly once: the response (429/503 a drop), the end of a streamed body (a
sample: latency to the end of the body), a timeout or a deadline cut (a
drop), cancellation or the caller's own errors (nothing), a response
collected or left open when the transport closes (nothing).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

import resilience
import resilience.prometheus as rp
import resilience.transport as transport_module
from resilience import (
    AIMDLimit,
    AsyncResilientTransport,
    CircuitBreaker,
    ConcurrencyLimit,
    ConcurrencyLimitExceededError,
    HTTPConcurrencyLimitExceededError,
    LimitAlgorithm,
    ResilientTransport,
)
from resilience._tracking import live
from resilience.testing import FakeClock

from .conftest import LiveServer


class Recording(LimitAlgorithm):
    """A fixed limit that records every sample it is fed (window=None: one update per call)."""

    def __init__(self, limit: int = 2) -> None:
        super().__init__(initial_limit=limit, min_limit=limit, max_limit=limit, window=None)
        self.samples: list[tuple[float, bool]] = []

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        self.samples.append((rtt, dropped))
        return limit


def fixed(
    limit: int = 2, *, clock: FakeClock | None = None, name: str = "fixed"
) -> ConcurrencyLimit:
    return ConcurrencyLimit(Recording(limit), name=name, clock=clock)


def answer(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, content=b"body"))


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body streamed in chunks; `fail` raises from the second chunk on."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield b"first;"
        if self.fail is not None:
            raise self.fail
        yield b"second"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first;"
        if self.fail is not None:
            raise self.fail
        yield b"second"


def streaming(status: int = 200, fail: BaseException | None = None) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, stream=Chunks(fail)))


def counts(limit: ConcurrencyLimit) -> dict[str, int]:
    metrics = limit.metrics()
    return {key: metrics[key] for key in ("in_flight", "succeeded", "dropped", "ignored")}


# -- configuration ------------------------------------------------------------------------------


def test_off_by_default_takes_no_permit_and_makes_no_limit() -> None:
    gc.collect()  # limits of earlier tests must not disappear from the count meanwhile
    before = len(list(live("limit")))
    transport = ResilientTransport(answer(200))
    assert transport.concurrency_limits is None
    assert transport._pipeline.limited is False
    with httpx.Client(transport=transport) as client:
        assert client.get("http://a.test/").status_code == 200
    assert len(list(live("limit"))) == before


def test_true_makes_one_aimd_limit_per_origin_named_after_it() -> None:
    transport = ResilientTransport(answer(200), concurrency_limit=True)
    with httpx.Client(transport=transport) as client:
        client.get("http://a.test/x")
        client.get("http://a.test/y")
        client.get("https://b.test:8443/")
    limits = transport.concurrency_limits
    assert isinstance(limits, type(transport_module.MappingProxyType({})))
    assert sorted(limits) == ["http://a.test:80", "https://b.test:8443"]
    a = limits["http://a.test:80"]
    assert a.name == "http://a.test:80"
    assert isinstance(a.algorithm, AIMDLimit)
    assert a.metrics()["succeeded"] == 2
    assert a.in_flight == 0


def test_per_origin_limits_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "_MAX_ORIGINS", 2)
    transport = ResilientTransport(answer(200), concurrency_limit=True)
    with httpx.Client(transport=transport) as client:
        for host in ("a", "b", "c"):
            client.get(f"http://{host}.test/")
    assert sorted(transport.concurrency_limits) == ["http://b.test:80", "http://c.test:80"]  # type: ignore[arg-type]


def test_a_busy_or_recently_used_origin_keeps_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full table drops the least recently used idle limit, never one with calls in flight."""
    monkeypatch.setattr(transport_module, "_MAX_ORIGINS", 2)
    transport = ResilientTransport(streaming(), concurrency_limit=lambda origin: fixed(1))
    with httpx.Client(transport=transport) as client:
        held = client.send(client.build_request("GET", "http://hot.test/"), stream=True)
        hot = transport.concurrency_limits["http://hot.test:80"]  # type: ignore[index]
        for host in ("a", "b", "c"):  # each new origin needs room
            client.get(f"http://{host}.test/")
        assert transport.concurrency_limits["http://hot.test:80"] is hot  # type: ignore[index]
        with pytest.raises(resilience.ConcurrencyLimitExceededError):
            client.get("http://hot.test/")  # still its limit of 1, with the held call in it
        held.close()
        client.get("http://hot.test/")
        client.get("http://d.test/")  # hot was used last: c.test goes
    assert sorted(transport.concurrency_limits) == ["http://d.test:80", "http://hot.test:80"]  # type: ignore[arg-type]


def test_a_factory_makes_each_origins_limit_once() -> None:
    made: list[str] = []

    def factory(origin: str) -> ConcurrencyLimit:
        made.append(origin)
        return fixed(5, name=f"out:{origin}")

    transport = ResilientTransport(answer(200), concurrency_limit=factory)
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            client.get("http://a.test/")
    assert made == ["http://a.test:80"]
    assert transport.concurrency_limits["http://a.test:80"].name == "out:http://a.test:80"  # type: ignore[index]


def test_a_factory_that_returns_something_else_is_a_type_error() -> None:
    transport = ResilientTransport(answer(200), concurrency_limit=lambda origin: 5)  # type: ignore[arg-type,return-value]
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(TypeError, match=r"must return a resilience\.ConcurrencyLimit"),
    ):
        client.get("http://a.test/")


@pytest.mark.parametrize("cls", [ResilientTransport, AsyncResilientTransport])
def test_bad_values_are_type_errors(cls: type) -> None:
    for bad in (5, "yes", AIMDLimit()):
        with pytest.raises(TypeError, match="concurrency_limit= must be True, False"):
            cls(answer(200), concurrency_limit=bad)
    with pytest.raises(TypeError, match=r"did you mean concurrency_limit=\?"):
        cls(answer(200), concurrency_limt=True)


def test_one_shared_limit_serves_every_origin_and_a_request_can_opt_out() -> None:
    limit = fixed(5)
    transport = ResilientTransport(answer(200), concurrency_limit=limit)
    assert transport.concurrency_limits is limit
    with httpx.Client(transport=transport) as client:
        client.get("http://a.test/")
        client.get("http://b.test/")
        client.get("http://b.test/", extensions={"resilience": {"concurrency_limit": False}})
        with pytest.raises(TypeError, match="must be True, False or None"):
            client.get("http://b.test/", extensions={"resilience": {"concurrency_limit": 1}})
    assert limit.metrics()["succeeded"] == 2


# -- rejection ----------------------------------------------------------------------------------


def test_a_full_limit_raises_an_httpx_error_not_counted_by_the_breaker_nor_retried() -> None:
    limit = fixed(1)
    breaker = CircuitBreaker(name="b", minimum_calls=1, failure_rate_threshold=0.01)
    calls: list[httpx.Request] = []
    inner = httpx.MockTransport(lambda request: calls.append(request) or httpx.Response(200))
    transport = ResilientTransport(inner, concurrency_limit=limit, breaker=breaker)
    held = limit.acquire()
    with httpx.Client(transport=transport) as client:
        with pytest.raises(httpx.TransportError) as caught:
            client.get("http://a.test/")
        error = caught.value
        assert isinstance(error, HTTPConcurrencyLimitExceededError)
        assert isinstance(error, ConcurrencyLimitExceededError)
        assert isinstance(error, resilience.BulkheadFullError)
        assert (error.name, error.limit, error.waited) == ("fixed", 1, 0.0)
        assert error.request.url == "http://a.test/"
        assert calls == []
        assert limit.metrics()["rejected"] == 1  # the default retry did not try again
        assert breaker.metrics().calls["failure"] == 0
        assert breaker.metrics().calls["success"] == 0
        assert breaker.state.name == "CLOSED"
        held.release()
        assert client.get("http://a.test/").status_code == 200
    assert breaker.metrics().calls["success"] == 1


def test_a_limit_rejection_gives_back_a_half_open_probe_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        name="p", open_duration=1.0, minimum_calls=1, failure_rate_threshold=0.5, clock=clock
    )
    breaker.acquire().record_failure()
    assert breaker.state.name == "OPEN"
    clock.advance(1.5)  # the next call is the one half-open probe
    limit = fixed(1)
    held = limit.acquire()
    transport = ResilientTransport(answer(200), concurrency_limit=limit, breaker=breaker)
    with httpx.Client(transport=transport) as client:
        for _ in range(3):  # a leaked probe slot would turn the 2nd into CircuitOpenError
            with pytest.raises(HTTPConcurrencyLimitExceededError):
                client.get("http://a.test/")
        held.release()
        assert client.get("http://a.test/").status_code == 200  # the probe, admitted
    assert breaker.state.name == "CLOSED"


# -- settling: responses and bodies --------------------------------------------------------------


@pytest.mark.parametrize(("status", "dropped"), [(200, 0), (500, 0), (429, 1), (503, 1)])
def test_a_response_in_memory_settles_at_once_429_and_503_are_drops(
    status: int, dropped: int
) -> None:
    limit = fixed()
    transport = ResilientTransport(answer(status), concurrency_limit=limit, retry=False)
    with httpx.Client(transport=transport) as client:
        client.get("http://a.test/")
    assert counts(limit) == {
        "in_flight": 0,
        "succeeded": 1 - dropped,
        "dropped": dropped,
        "ignored": 0,
    }


def test_each_retried_attempt_settles_its_own_permit() -> None:
    statuses = iter([503, 503, 200])
    inner = httpx.MockTransport(lambda request: httpx.Response(next(statuses)))
    limit = fixed()
    with (
        resilience.testing.fast_retries(),
        httpx.Client(transport=ResilientTransport(inner, concurrency_limit=limit)) as client,
    ):
        assert client.get("http://a.test/").status_code == 200
    assert counts(limit) == {"in_flight": 0, "succeeded": 1, "dropped": 2, "ignored": 0}


def test_a_streamed_body_holds_its_slot_and_samples_latency_to_its_end() -> None:
    clock = FakeClock()
    limit = fixed(clock=clock)
    transport = ResilientTransport(streaming(), concurrency_limit=limit, clock=clock)
    with (
        httpx.Client(transport=transport) as client,
        client.stream("GET", "http://a.test/") as response,
    ):
        clock.advance(0.25)
        assert limit.in_flight == 1
        assert response.read() == b"first;second"
    assert counts(limit) == {"in_flight": 0, "succeeded": 1, "dropped": 0, "ignored": 0}
    assert limit.algorithm.samples == [(0.25, False)]  # type: ignore[attr-defined]
    assert transport._pipeline.open_limit_permits == {}


def test_a_streamed_overload_answer_drops_at_the_headers() -> None:
    limit = fixed()
    transport = ResilientTransport(streaming(503), concurrency_limit=limit, retry=False)
    with (
        httpx.Client(transport=transport) as client,
        client.stream("GET", "http://a.test/") as response,
    ):
        assert response.status_code == 503
        assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 1, "ignored": 0}
        response.read()
    assert counts(limit)["dropped"] == 1


def test_a_body_that_times_out_is_a_drop_and_a_broken_one_says_nothing() -> None:
    limit = fixed()
    for fail in (httpx.ReadTimeout("slow"), httpx.ReadError("reset")):
        transport = ResilientTransport(streaming(fail=fail), concurrency_limit=limit, retry=False)
        with (
            httpx.Client(transport=transport) as client,
            client.stream("GET", "http://a.test/") as response,
            pytest.raises(type(fail)),
        ):
            response.read()
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 1, "ignored": 1}


def test_a_collected_response_and_a_closed_transport_release_their_slots() -> None:
    limit = fixed(5)
    transport = ResilientTransport(streaming(), concurrency_limit=limit)
    client = httpx.Client(transport=transport)
    response = client.send(client.build_request("GET", "http://a.test/"), stream=True)
    assert limit.in_flight == 1
    del response
    gc.collect()
    assert limit.in_flight == 1  # queued by the collector, never settled inside it
    client.get("http://a.test/")  # the next request releases it first
    assert counts(limit) == {"in_flight": 0, "succeeded": 1, "dropped": 0, "ignored": 1}
    kept = client.send(client.build_request("GET", "http://a.test/"), stream=True)
    client.close()
    assert counts(limit) == {"in_flight": 0, "succeeded": 1, "dropped": 0, "ignored": 2}
    kept.close()  # settled once: closing later adds nothing
    assert counts(limit)["ignored"] == 2


def test_a_drop_if_that_raises_releases_both_permits() -> None:
    def broken(result: object) -> bool:
        raise ValueError("predicate bug")

    limit = ConcurrencyLimit(Recording(), drop_if=broken)
    breaker = CircuitBreaker(name="d")
    transport = ResilientTransport(streaming(), concurrency_limit=limit, breaker=breaker)
    with httpx.Client(transport=transport) as client, pytest.raises(ValueError, match="bug"):
        client.get("http://a.test/")
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 0, "ignored": 1}
    assert breaker.metrics().calls["success"] == breaker.metrics().calls["failure"] == 0


# -- a real server: deadline cuts, rejections under load, Prometheus ------------------------------


def test_a_deadline_cut_is_a_drop(server: LiveServer) -> None:
    limit = fixed()
    transport = ResilientTransport(concurrency_limit=limit, total_timeout=0.2, retry=False)
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(resilience.HTTPDeadlineExceededError),
    ):
        client.get(f"{server.url}/slow", params={"seconds": 2})
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 1, "ignored": 0}


def test_concurrent_requests_past_the_limit_are_rejected_at_once(server: LiveServer) -> None:
    limit = fixed(2)
    transport = ResilientTransport(concurrency_limit=limit)
    outcomes: list[str] = []
    lock = threading.Lock()
    with httpx.Client(transport=transport) as client:

        def call() -> None:
            started = time.monotonic()
            try:
                client.get(f"{server.url}/slow", params={"seconds": 0.4})
                outcome = "ok"
            except HTTPConcurrencyLimitExceededError:
                assert time.monotonic() - started < 0.2
                outcome = "rejected"
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=call) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert sorted(outcomes) == ["ok", "ok", "rejected", "rejected", "rejected"]
    assert limit.metrics()["rejected"] == 3
    assert limit.in_flight == 0


def test_per_origin_limits_are_exported_to_prometheus(server: LiveServer) -> None:
    registry = CollectorRegistry()
    rp.register(registry)
    transport = ResilientTransport(concurrency_limit=True, retry=False)
    with httpx.Client(transport=transport) as client:
        client.get(f"{server.url}/flaky/{time.monotonic_ns()}", params={"fails": 1, "code": 503})
    origin = server.url
    assert registry.get_sample_value("resilience_concurrency_limit", {"name": origin}) == 20
    assert registry.get_sample_value("resilience_concurrency_in_flight", {"name": origin}) == 0
    assert registry.get_sample_value("resilience_concurrency_dropped_total", {"name": origin}) == 1


# -- async: asyncio and trio ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_streamed_body_settles_once_and_rejects_past_the_limit() -> None:
    limit = fixed(1)
    transport = AsyncResilientTransport(streaming(), concurrency_limit=limit)
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://a.test/") as response:
            assert limit.in_flight == 1
            with pytest.raises(HTTPConcurrencyLimitExceededError):
                await client.get("http://a.test/")
            await response.aread()
        assert (await client.get("http://a.test/")).content == b"first;second"
    assert counts(limit) == {"in_flight": 0, "succeeded": 2, "dropped": 0, "ignored": 0}
    assert limit.metrics()["rejected"] == 1


@pytest.mark.anyio
async def test_async_cancelled_attempt_releases_and_a_cancelled_body_too() -> None:
    gate = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    limit = fixed()
    transport = AsyncResilientTransport(httpx.MockTransport(hang), concurrency_limit=limit)
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(0.05):
            await client.get("http://a.test/")
        assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 0, "ignored": 1}

    class Stalls(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"first;"
            await anyio.sleep(10)
            yield b"never"

    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=Stalls()))
    transport = AsyncResilientTransport(inner, concurrency_limit=limit)
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(0.05):
            await client.get("http://a.test/")
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 0, "ignored": 2}


@pytest.mark.anyio
async def test_async_deadline_cut_on_a_real_server_is_a_drop(server: LiveServer) -> None:
    limit = fixed()
    transport = AsyncResilientTransport(concurrency_limit=limit, total_timeout=0.2, retry=False)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(resilience.HTTPDeadlineExceededError):
            await client.get(f"{server.url}/slow", params={"seconds": 2})
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 1, "ignored": 0}


@pytest.mark.parametrize(
    "error",
    [httpx.PoolTimeout("pool full"), httpx.ConnectError("refused"), httpx.UnsupportedProtocol("x")],
)
def test_the_requests_own_errors_and_other_errors_are_not_samples(error: Exception) -> None:
    def fails(request: httpx.Request) -> httpx.Response:
        raise error

    limit = fixed()
    transport = ResilientTransport(httpx.MockTransport(fails), concurrency_limit=limit, retry=False)
    with httpx.Client(transport=transport) as client, pytest.raises(type(error)):
        client.get("http://a.test/")
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 0, "ignored": 1}


def test_a_connect_timeout_is_a_drop() -> None:
    def fails(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow")

    limit = fixed()
    transport = ResilientTransport(httpx.MockTransport(fails), concurrency_limit=limit, retry=False)
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectTimeout):
        client.get("http://a.test/")
    assert counts(limit) == {"in_flight": 0, "succeeded": 0, "dropped": 1, "ignored": 0}
