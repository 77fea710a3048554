"""The transports' options: an explicit keyword-only signature, typo errors, defaults, clock=."""

from __future__ import annotations

import inspect

import httpx
import pytest

from resilience import (
    AsyncResilientTransport,
    BreakerRegistry,
    CircuitBreaker,
    HTTPDeadlineExceededError,
    ResilientTransport,
)
from resilience._tracking import live
from resilience.events import RetryScheduled
from resilience.testing import FakeClock
from resilience.transport import IDEMPOTENT_METHODS, RETRY_STATUSES, default_failure_status

TRANSPORTS = [
    (ResilientTransport, httpx.HTTPTransport, httpx.MockTransport),
    (AsyncResilientTransport, httpx.AsyncHTTPTransport, httpx.MockTransport),
]
IDS = ["sync", "async"]

#: The resilience options, in order, with their defaults (`...`: computed, see the guide).
OPTIONS = {
    "total_timeout": 30.0,
    "attempt_timeout": 10.0,
    "retry": True,
    "breaker": True,
    "concurrency_limit": False,
    "retry_methods": IDEMPOTENT_METHODS,
    "retry_statuses": RETRY_STATUSES,
    "failure_status": default_failure_status,
    "idempotency_key": False,
    "buffer_bodies": False,
    "max_drain_bytes": 65536,
    "send_deadline_header": True,
    "half_open_max_wait": ...,
    "clock": None,
}
#: The async transport's options: the same, with `hedge=` (the sync one refuses it).
ASYNC_OPTIONS = dict([*list(OPTIONS.items())[:5], ("hedge", None), *list(OPTIONS.items())[5:]])


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


# -- the signature -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "inner", "_mock"), TRANSPORTS, ids=IDS)
def test_every_option_is_in_the_signature_with_its_default(cls, inner, _mock) -> None:
    """transport= first, then every option keyword-only with its default; no **kwargs.

    The httpx arguments are exactly those of the installed httpx's transport,
    in its order, with its defaults: an httpx release that adds or changes one
    fails here.
    """
    parameters = inspect.signature(cls).parameters
    assert next(iter(parameters)) == "transport"
    assert parameters["transport"].default is None
    assert parameters["transport"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    rest = list(parameters.values())[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)
    assert all(p.annotation is not inspect.Parameter.empty for p in parameters.values())
    options = ASYNC_OPTIONS if cls is AsyncResilientTransport else OPTIONS
    assert [p.name for p in rest[: len(options)]] == list(options)
    for name, default in options.items():
        assert parameters[name].default == default, name
    httpx_parameters = list(inspect.signature(inner).parameters.values())
    assert [(p.name, p.default) for p in rest[len(options) :]] == [
        (p.name, p.default) for p in httpx_parameters
    ]


@pytest.mark.parametrize(("cls", "_inner", "mock"), TRANSPORTS, ids=IDS)
def test_a_misspelled_option_names_the_closest_and_every_valid_one(cls, _inner, mock) -> None:
    """Not just Python's "unexpected keyword argument": what was meant, and what exists."""
    valid = ", ".join(f"{name}=" for name in inspect.signature(cls).parameters)
    with pytest.raises(TypeError) as caught:
        cls(total_timout=2)
    assert str(caught.value) == (
        f"{cls.__name__}() got an unknown option total_timout= "
        f"(did you mean total_timeout=?); valid options: {valid}"
    )
    with pytest.raises(TypeError, match=r"unknown options verfy= \(did you mean verify=\?\), "):
        cls(mock(ok), verfy=False, zzz=1)
    with pytest.raises(TypeError, match=r"unknown option zzz=; valid options: transport="):
        cls(zzz=1)


def test_a_subclass_taking_any_keyword_keeps_pythons_own_check() -> None:
    """A subclass whose __init__ takes **kwargs decides for itself what it accepts."""

    class Named(ResilientTransport):
        def __init__(self, **options: object) -> None:
            self.name = options.pop("name")
            super().__init__(httpx.MockTransport(ok), retry=False)

    assert Named(name="x").name == "x"


@pytest.mark.parametrize(("cls", "inner", "mock"), TRANSPORTS, ids=IDS)
def test_httpx_arguments_with_a_transport_are_an_error(cls, inner, mock) -> None:
    """Even one equal to httpx's default: it would be silently dropped."""
    for options in ({"verify": False}, {"verify": True}, {"http2": False, "retries": 0}):
        with pytest.raises(TypeError, match=f"either transport= or {inner.__name__} arguments"):
            cls(mock(ok), **options)
        with pytest.raises(TypeError, match="not both"):
            cls(transport=mock(ok), **options)


def test_httpx_arguments_with_a_transport_are_an_error_from_a_subclass_too() -> None:
    """A subclass's own __init__ passing both is caught by the values that differ."""

    class Mine(ResilientTransport):
        def __init__(self, **options: object) -> None:
            super().__init__(httpx.MockTransport(ok), limits=httpx.Limits(max_connections=1))

    with pytest.raises(TypeError, match=r"not both: \['limits'\]"):
        Mine()


def test_httpx_arguments_build_the_inner_transport() -> None:
    """Each one reaches the httpx transport built inside."""
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=1)
    transport = ResilientTransport(limits=limits, http2=False, retries=2)
    pool = transport._inner._pool  # type: ignore[attr-defined]
    assert (pool._max_connections, pool._max_keepalive_connections, pool._retries) == (3, 1, 2)
    transport.close()


# -- defaults ----------------------------------------------------------------------------------


def sent_timeouts(**options: object) -> dict[str, float]:
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200)

    transport = ResilientTransport(httpx.MockTransport(record), **options)  # type: ignore[arg-type]
    transport.handle_request(httpx.Request("GET", "http://api.test/"))
    return seen[0]


def test_a_default_attempt_timeout_never_exceeds_a_given_total_timeout() -> None:
    """10 s per attempt unless the total is shorter; 10 passed on purpose is checked like any."""
    assert max(sent_timeouts().values()) == 10.0
    assert max(sent_timeouts(total_timeout=4).values()) <= 4.0
    assert max(sent_timeouts(total_timeout=None).values()) == 10.0
    assert max(sent_timeouts(total_timeout=None, attempt_timeout=60).values()) == 60.0
    for attempt in (10, 10.0):
        with pytest.raises(ValueError, match=r"attempt_timeout=10(\.0)? exceeds total_timeout=4"):
            ResilientTransport(httpx.MockTransport(ok), total_timeout=4, attempt_timeout=attempt)


# -- clock= ------------------------------------------------------------------------------------


def test_a_fake_clock_drives_the_default_retry_breakers_budgets_and_deadline() -> None:
    """clock= reaches every default policy: the retry's waits are fake, the deadline too."""
    clock = FakeClock()
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls < 3 else 200, headers={"Retry-After": "7"})

    transport = ResilientTransport(httpx.MockTransport(flaky), clock=clock, total_timeout=60)
    delays: list[float] = []
    assert transport.retry is not None
    transport.retry.events.subscribe(
        lambda event: delays.append(event.delay) if isinstance(event, RetryScheduled) else None
    )
    with httpx.Client(transport=transport) as http:
        response = http.get("http://clock.test/")
    assert response.status_code == 200
    assert clock.sleeps == delays == [7.0, 7.0]  # slept on the fake clock, as the server asked
    assert response.extensions["resilience"]["elapsed"] == 14.0
    registry = transport.breakers
    assert isinstance(registry, BreakerRegistry)
    assert registry.get("http://clock.test:80").clock is clock
    assert transport.retry.clock is clock
    budgets = [budget for budget in live("budget") if budget.name == "http://clock.test:80"]
    assert budgets
    assert all(budget.clock is clock for budget in budgets)


def test_an_explicit_clock_times_the_deadline_even_with_your_breaker() -> None:
    """Your breaker keeps its clock; the transport's deadline runs on clock=."""
    clock = FakeClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(5)
        raise httpx.ReadTimeout("slow", request=request)

    transport = ResilientTransport(
        httpx.MockTransport(slow), breaker=CircuitBreaker("mine"), clock=clock, total_timeout=5
    )
    with pytest.raises(HTTPDeadlineExceededError):
        transport.handle_request(httpx.Request("GET", "http://api.test/"))


@pytest.mark.parametrize("cls", [ResilientTransport, AsyncResilientTransport], ids=IDS)
def test_clock_is_checked_like_every_policys(cls) -> None:
    """Anything but a resilience.Clock is a TypeError naming clock=."""
    with pytest.raises(TypeError, match="clock="):
        cls(httpx.MockTransport(ok), clock=object())
