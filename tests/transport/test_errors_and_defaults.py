"""Errors no retry can fix, the default probe bound, a deadline spent early, sync/async mix-ups."""

from __future__ import annotations

import pickle
import time

import httpx
import pytest

import resilience
from resilience import (
    AsyncResilientTransport,
    BreakerRegistry,
    CircuitBreaker,
    HTTPDeadlineExceededError,
    ResilientTransport,
    State,
)
from resilience.testing import FakeClock
from resilience.transport import NON_RETRYABLE_ERRORS

# -- errors that no retry can fix --------------------------------------------------------------

CALLER_ERRORS = [
    httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
    httpx.LocalProtocolError("Illegal header value b' x'"),
    httpx.InvalidURL("Invalid port: 'x'"),
    httpx.StreamConsumed(),
    httpx.PoolTimeout("the client's own pool had no free connection"),
]


@pytest.mark.parametrize("error", CALLER_ERRORS, ids=lambda error: type(error).__name__)
def test_errors_no_retry_can_fix_are_not_retried_and_not_failures(error: Exception) -> None:
    """The default retry sends them once; every breaker counts them as IGNORED."""
    sent: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise error

    transport = ResilientTransport(httpx.MockTransport(fail), clock=FakeClock())
    with httpx.Client(transport=transport) as http, pytest.raises(type(error)):
        http.get("http://api.test/")
    assert len(sent) == 1
    registry = transport.breakers
    assert isinstance(registry, BreakerRegistry)
    calls = registry.get("http://api.test:80").metrics().calls
    assert (calls["failure"], calls["ignored"]) == (0, 1)
    assert isinstance(error, NON_RETRYABLE_ERRORS)


def test_an_unsupported_scheme_from_the_real_pool_is_sent_once() -> None:
    """The real pool's own UnsupportedProtocol (no MockTransport): one attempt, no wait."""
    clock = FakeClock()
    transport = ResilientTransport(clock=clock)
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.UnsupportedProtocol):
        http.get("ftp://127.0.0.1/")
    assert clock.sleeps == []
    assert transport.retry is not None
    assert transport.retry.metrics()["failed_not_retryable"] == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.RemoteProtocolError("closed"), httpx.ProxyError("502")],
    ids=lambda error: type(error).__name__,
)
def test_transient_transport_errors_are_still_retried_and_failures(error: Exception) -> None:
    """Connection resets, a server breaking the protocol, a proxy that cannot reach it."""
    sent: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise error

    breaker = CircuitBreaker("transient", consecutive_failures=100)
    transport = ResilientTransport(httpx.MockTransport(fail), breaker=breaker, clock=FakeClock())
    with httpx.Client(transport=transport) as http, pytest.raises(type(error)):
        http.get("http://api.test/")
    assert len(sent) == 4
    assert breaker.metrics().calls["failure"] == 4


def test_a_retry_you_pass_decides_for_itself() -> None:
    """Retry(on=(httpx.TransportError,)) retries them; the breaker still ignores them."""
    sent: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.UnsupportedProtocol("no")

    breaker = CircuitBreaker("mine", consecutive_failures=1)
    mine = resilience.Retry(on=(httpx.TransportError,), attempts=2, clock=FakeClock())
    transport = ResilientTransport(httpx.MockTransport(fail), retry=mine, breaker=breaker)
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.UnsupportedProtocol):
        http.get("http://api.test/")
    assert len(sent) == 2
    assert breaker.metrics().calls["ignored"] == 2
    assert breaker.state is State.CLOSED


def test_the_breakers_own_classification_decides_for_errors() -> None:
    """ignore= on your breaker is honoured; an inner resilient transport's rejection is IGNORED."""
    timeouts = CircuitBreaker("ignores-timeouts", consecutive_failures=1, ignore=httpx.ReadTimeout)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    transport = ResilientTransport(httpx.MockTransport(slow), breaker=timeouts, retry=False)
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.ReadTimeout):
        http.get("http://api.test/")
    assert timeouts.metrics().calls["ignored"] == 1
    assert timeouts.state is State.CLOSED

    inner_breaker = CircuitBreaker("inner", consecutive_failures=1)
    inner_breaker.force_open()
    inner = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), breaker=inner_breaker
    )
    outer_breaker = CircuitBreaker("outer", consecutive_failures=1)
    outer = ResilientTransport(inner, breaker=outer_breaker)
    with httpx.Client(transport=outer) as http, pytest.raises(resilience.CircuitOpenError):
        http.get("http://api.test/")
    assert outer_breaker.metrics().calls["ignored"] == 1
    assert outer_breaker.state is State.CLOSED


# -- the default breakers bound a probe that never reports -------------------------------------


def test_the_default_breakers_bound_a_silent_probe_by_the_total_timeout() -> None:
    """half_open_max_wait defaults to the total timeout (else the attempt timeout, else 30 s)."""

    def probe_wait(transport: ResilientTransport | AsyncResilientTransport) -> float | None:
        registry = transport.breakers
        assert isinstance(registry, BreakerRegistry)
        return registry.get("http://a.test:80").half_open_max_wait

    assert probe_wait(ResilientTransport()) == 30.0
    assert probe_wait(AsyncResilientTransport()) == 30.0
    assert probe_wait(ResilientTransport(total_timeout=5)) == 5.0
    assert probe_wait(ResilientTransport(total_timeout=None)) == 10.0
    assert probe_wait(ResilientTransport(total_timeout=None, attempt_timeout=None)) == 30.0
    assert probe_wait(ResilientTransport(half_open_max_wait=120)) == 120.0
    assert probe_wait(ResilientTransport(half_open_max_wait=None)) is None


def test_a_silent_probe_of_a_default_breaker_reopens_it_after_the_wait() -> None:
    """A probe that never reports no longer blocks the origin forever."""
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), half_open_max_wait=0.05
    )
    registry = transport.breakers
    assert isinstance(registry, BreakerRegistry)
    breaker = registry.get("http://api.test:80")
    breaker.apply_remote(State.OPEN, 0.0)  # opened, and due for a probe at once
    assert breaker.state is State.HALF_OPEN
    probe = breaker.acquire()  # taken and never settled
    assert probe.probe
    time.sleep(0.06)
    assert breaker.state is State.OPEN  # reopened: the next probe comes after open_duration
    probe.release()


@pytest.mark.parametrize(
    "breaker",
    [CircuitBreaker("mine"), BreakerRegistry(), False],
    ids=["breaker", "registry", "none"],
)
def test_half_open_max_wait_only_configures_the_default_breakers(breaker: object) -> None:
    """With your own breaker (or none) the option would do nothing: a TypeError says where."""
    with pytest.raises(TypeError, match="half_open_max_wait="):
        ResilientTransport(breaker=breaker, half_open_max_wait=10)
    with pytest.raises(ValueError, match="half_open_max_wait="):
        ResilientTransport(half_open_max_wait=-1)


# -- a deadline spent before the attempt -------------------------------------------------------


def test_a_deadline_spent_before_the_attempt_says_so_and_pickles() -> None:
    """Nothing was sent: before_call=True, kept through pickling."""
    transport = ResilientTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    with (
        httpx.Client(transport=transport) as http,
        resilience.deadline(0),
        pytest.raises(HTTPDeadlineExceededError) as caught,
    ):
        http.get("http://api.test/")
    error = caught.value
    assert error.before_call is True
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is HTTPDeadlineExceededError
    assert (copy.before_call, copy.name, copy.budget) == (True, "http://api.test:80", error.budget)
    assert copy.request.url == "http://api.test/"
    assert HTTPDeadlineExceededError("x", 1.0).before_call is False


# -- a sync transport where an async one belongs, and the reverse ------------------------------


def test_wrapping_a_transport_of_the_other_kind_is_a_type_error() -> None:
    """Named parameter, and what to use instead."""
    with pytest.raises(TypeError, match=r"transport=.*AsyncResilientTransport"):
        ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"transport=.*use resilience\.ResilientTransport"):
        AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_sync_transport_in_an_async_client_is_a_clear_type_error() -> None:
    """Not httpx's AttributeError '__aenter__': a TypeError that says what to use."""
    transport = ResilientTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    with pytest.raises(TypeError, match="AsyncResilientTransport"):
        async with httpx.AsyncClient(transport=transport):  # type: ignore[arg-type]
            pass
    http = httpx.AsyncClient(transport=transport)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncResilientTransport"):
        await http.get("http://api.test/")
    with pytest.raises(TypeError, match="AsyncResilientTransport"):
        await http.aclose()


def test_an_async_transport_in_a_sync_client_is_a_clear_type_error() -> None:
    """The reverse mix-up names ResilientTransport."""
    transport = AsyncResilientTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    with (
        pytest.raises(TypeError, match=r"use resilience\.ResilientTransport"),
        httpx.Client(transport=transport),  # type: ignore[arg-type]
    ):
        pass
    http = httpx.Client(transport=transport)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use resilience\.ResilientTransport"):
        http.get("http://api.test/")
    with pytest.raises(TypeError, match=r"use resilience\.ResilientTransport"):
        http.close()


# -- a breaker shared through an async fleet backend -------------------------------------------


@pytest.mark.anyio
async def test_the_async_transport_asks_an_async_fleet_backend_for_a_probe() -> None:
    """A half-open probe is granted by `agrant_probe` (awaited), not the blocking `grant_probe`."""
    asked: list[str] = []

    class Backend:
        def grant_probe(self, breaker: CircuitBreaker) -> object:
            asked.append("blocking")
            return None

        async def agrant_probe(self, breaker: CircuitBreaker) -> object:
            asked.append("awaited")
            return None

    clock = FakeClock()
    breaker = CircuitBreaker("fleet", consecutive_failures=1, open_duration=1.0, clock=clock)
    breaker.share(Backend())  # type: ignore[arg-type]
    breaker.acquire().record_failure()
    clock.advance(2.0)
    transport = AsyncResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), breaker=breaker, retry=False
    )
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get("http://api.test/")).status_code == 200
    assert asked == ["awaited"]
    assert breaker.state is State.CLOSED


# -- options checked at construction --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"retry_statuses": "503"}, TypeError, "retry_statuses="),
        ({"retry_statuses": 503}, TypeError, "retry_statuses="),
        ({"retry_statuses": None}, TypeError, "retry_statuses="),
        ({"retry_statuses": {503, "429"}}, ValueError, "retry_statuses="),
        ({"retry_statuses": {True}}, ValueError, "retry_statuses="),
        ({"retry_statuses": {1503}}, ValueError, "retry_statuses="),
        ({"retry_methods": "GET"}, TypeError, "retry_methods="),
        ({"retry_methods": None}, TypeError, "retry_methods="),
        ({"retry_methods": ["GET", 1]}, TypeError, "retry_methods="),
    ],
)
def test_retry_statuses_and_methods_are_checked_at_construction(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """A string where a collection belongs would retry nothing (or raise per request)."""
    with pytest.raises(error, match=match):
        ResilientTransport(httpx.MockTransport(lambda r: httpx.Response(200)), **options)


def test_retry_statuses_takes_any_collection_of_codes() -> None:
    """Lists, sets, ranges: any collection of ints in 100-599."""
    for statuses in ([503], {502, 503}, range(500, 600), frozenset({429})):
        ResilientTransport(
            httpx.MockTransport(lambda r: httpx.Response(200)), retry_statuses=statuses
        )
