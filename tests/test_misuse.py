"""The misuse table: every public policy and entry point, used the wrong way, fails loudly.

- a sync entry point given a coroutine function (or a function returning an
  awaitable) raises `MisuseError` (a `TypeError`) that points at the async API,
  leaves no "never awaited" warning, and is counted nowhere as a success;
- an async entry point given a plain function raises `MisuseError` pointing at
  the sync API;
- no policy retries a misuse, counts it as a downstream failure, or replaces it
  with a fallback, even with `on=Exception`;
- every constructor parameter rejects wrong types, bools, NaN, infinities and
  negatives with an error naming the parameter; every parameter of every
  public constructor is in the table, so a new one cannot be added unchecked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import resilience
import resilience.grpc as resilience_grpc
from resilience import (
    AIMDLimit,
    Backoff,
    BreakerRegistry,
    Bulkhead,
    CircuitBreaker,
    ConcurrencyLimit,
    CountWindow,
    Fallback,
    Gradient2Limit,
    Hedge,
    MisuseError,
    Retry,
    RetryBudget,
    State,
    Timeout,
    TimeWindow,
    VegasLimit,
    compose,
    exponential_open_duration,
)
from resilience.testing import FakeClock


async def downstream_fails() -> str:
    raise ConnectionError("down")


def plain() -> str:
    return "plain"


def _breaker() -> CircuitBreaker:
    return CircuitBreaker("misuse", consecutive_failures=1, clock=FakeClock())


# Each maker returns (policy, the breaker that must stay clean or None).
POLICIES: dict[str, Callable[[], tuple[Any, CircuitBreaker | None]]] = {
    "breaker": lambda: (b := _breaker(), b),
    "retry": lambda: (Retry(on=Exception, attempts=3, wait=0), None),
    "bulkhead": lambda: (Bulkhead(2), None),
    "limit": lambda: (ConcurrencyLimit(), None),
    "timeout": lambda: (Timeout(1.0), None),
    "fallback": lambda: (Fallback("fallback", on=Exception), None),
    "compose": lambda: (
        compose(
            Fallback("fallback", on=Exception),
            Retry(on=Exception, attempts=3, wait=0),
            b := _breaker(),
            Bulkhead(2),
            ConcurrencyLimit(),
            Timeout(1.0),
        ),
        b,
    ),
    "compose-breaker-innermost": lambda: (
        compose(Fallback("fallback", on=Exception), Retry(on=Exception, wait=0), b := _breaker()),
        b,
    ),
}


def _no_success_recorded(breaker: CircuitBreaker | None) -> None:
    if breaker is not None:
        calls = breaker.metrics().calls
        assert calls["success"] == 0, calls
        assert calls["failure"] == 0, calls
        assert breaker.state is State.CLOSED


@pytest.mark.parametrize("kind", sorted(POLICIES))
@pytest.mark.parametrize("entry", ["call", "decorated-wrapper"])
def test_sync_entry_given_an_awaitable_raises(kind: str, entry: str) -> None:
    """`policy.call(async_fn)`, or a plain function returning a coroutine, is refused."""
    policy, breaker = POLICIES[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "coroutine never awaited" warning fails the test
        for _ in range(3):
            run = (
                (lambda: policy.call(downstream_fails))
                if entry == "call"
                else policy(lambda: downstream_fails())
            )
            with pytest.raises(MisuseError, match=r"acall|async") as caught:
                run()
            assert isinstance(caught.value, TypeError)
    _no_success_recorded(breaker)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_async_entry_given_a_plain_function_raises(kind: str) -> None:
    """`await policy.acall(sync_fn)` is refused with a pointer to the sync API."""
    policy, breaker = POLICIES[kind]()

    async def run() -> None:
        for _ in range(3):
            with pytest.raises(MisuseError, match=r"call\(|sync"):
                await policy.acall(plain)

    asyncio.run(run())
    _no_success_recorded(breaker)


def test_a_misuse_is_never_retried() -> None:
    """Retry(on=Exception) does not retry a misuse: one call, not three."""
    calls: list[int] = []

    def returns_coroutine() -> object:
        calls.append(1)
        return downstream_fails()

    retry = Retry(on=Exception, attempts=3, wait=0)
    with pytest.raises(MisuseError):
        retry.call(compose(_breaker()).call, returns_coroutine)
    assert calls == [1]
    assert retry.metrics()["retries"] == 0


def test_sync_limit_wait_inside_a_running_loop_raises() -> None:
    """`with limit:` (a ConcurrencyLimit) that would wait inside an event loop raises too."""
    limit = ConcurrencyLimit(AIMDLimit(initial_limit=1), max_wait=1.0)

    async def run() -> None:
        async with limit:
            with pytest.raises(MisuseError, match="async with limit"), limit:
                pass
        assert limit.in_flight == 0
        assert limit.waiting == 0

    asyncio.run(run())


def test_sync_bulkhead_wait_inside_a_running_loop_raises() -> None:
    """`with bulkhead:` that would wait inside an event loop raises instead of blocking it."""
    bulkhead = Bulkhead(1, max_wait=1.0)

    async def run() -> None:
        async with bulkhead:
            with pytest.raises(MisuseError, match="async with"), bulkhead:
                pass
        assert bulkhead.in_flight == 0
        assert bulkhead.waiting == 0

    asyncio.run(run())


# -- bad values: every parameter of every public constructor -----------------------------

NOT_A_NUMBER = [True, "1", None, math.nan]
SECONDS = [*NOT_A_NUMBER, -1.0, math.inf, dt.timedelta(seconds=-1)]
COUNT = [True, 1.5, "2", None, -1]
RATIO = [True, "0.5", math.nan, -0.1, 1.5, math.inf]
NAME = [3, None, ""]
FLAG = [1, "yes", None]
CLOCK = [1.0, "clock", object()]
CALLABLE = [3, "f"]

# constructor -> {parameter: bad values}; parameters that take any object (an
# exception spec is checked in test_outcome.py; a fallback value in
# test_fallback.py) map to a reason instead.
TABLE: dict[Callable[..., Any], dict[str, list[object] | str]] = {
    CircuitBreaker: {
        "name": NAME,
        "failure_rate_threshold": [r for r in RATIO if r is not None],
        "minimum_calls": [c for c in COUNT if c is not None],
        "window": [100, "100", CountWindow],
        "consecutive_failures": [c for c in COUNT if c is not None],
        "slow_call_duration": [s for s in SECONDS if s is not None],
        "slow_call_rate_threshold": RATIO,
        "open_duration": SECONDS,
        "half_open_max_calls": COUNT,
        "half_open_max_wait": [s for s in SECONDS if s is not None],
        "record": "exception spec: tests/test_outcome.py",
        "ignore": "exception spec: tests/test_outcome.py",
        "failure_if": CALLABLE,
        "record_durations": FLAG,
        "clock": CLOCK,
    },
    CountWindow: {"size": COUNT},
    TimeWindow: {"seconds": SECONDS, "buckets": [True, 1.5, "2", -1, 0]},
    exponential_open_duration: {
        "initial": SECONDS,
        "multiplier": [True, "2", math.nan, math.inf, 0.5, -2],
        "maximum": SECONDS,
    },
    BreakerRegistry: {
        "max_size": COUNT,
        "defaults": "each default is a CircuitBreaker parameter, checked by building one",
    },
    Retry: {
        "on": "exception spec: tests/test_outcome.py",
        "attempts": COUNT,
        "wait": ["1", True, -1, math.nan, math.inf, object()],
        "retry_if_result": CALLABLE,
        "budget": [0.2, "budget", object()],
        "max_retry_after": [True, "1", None, math.nan, -1],
        "raise_on_result": FLAG,
        "retry_circuit_open": FLAG,
        "discard_result": CALLABLE,
        "name": NAME,
        "clock": CLOCK,
    },
    Backoff: {
        "initial": SECONDS,
        "maximum": SECONDS,
        "multiplier": [True, "2", math.nan, math.inf, 0.5, -2],
        "jitter": ["sometimes", 3, True],
        "rng": [3, "seed"],
    },
    RetryBudget: {
        "name": NAME,
        "ratio": [True, "0.2", math.nan, math.inf, -0.1, 2],
        "min_per_second": [True, "1", None, math.nan, math.inf, -1],
        "window": SECONDS,
        "buckets": COUNT,
        "clock": CLOCK,
    },
    Bulkhead: {
        "max_concurrent": COUNT,
        "max_wait": [True, "1", None, math.nan, -1],
        "max_queue": [True, 1.5, "2", -1],
        "name": NAME,
        "clock": CLOCK,
    },
    ConcurrencyLimit: {
        "algorithm": [3, "aimd", AIMDLimit, object()],
        "max_wait": [True, "1", None, math.nan, -1],
        "max_queue": [True, 1.5, "2", -1],
        "drop_if": CALLABLE,
        "drop_on": "exception spec: tests/test_outcome.py (and tests/policies/test_limit.py)",
        "name": NAME,
        "clock": CLOCK,
    },
    AIMDLimit: {
        "initial_limit": COUNT,
        "min_limit": COUNT,
        "max_limit": COUNT,
        "backoff_ratio": [True, "0.9", math.nan, math.inf, 0.4, 1.0, -0.9],
        "timeout": SECONDS,
        "window": [s for s in SECONDS if s is not None],
    },
    Gradient2Limit: {
        "initial_limit": COUNT,
        "min_limit": COUNT,
        "max_limit": COUNT,
        "smoothing": [*RATIO, 0],
        "queue_size": [True, 1.5, "4", None, -1],
        "long_window": COUNT,
        "rtt_tolerance": [True, "1.5", None, math.nan, math.inf, 0.5, -1],
        "window": [s for s in SECONDS if s is not None],
    },
    VegasLimit: {
        "initial_limit": COUNT,
        "min_limit": COUNT,
        "max_limit": COUNT,
        "smoothing": [*RATIO, 0],
        "probe_multiplier": COUNT,
        "rng": [3, "seed", object()],
        "window": [s for s in SECONDS if s is not None],
    },
    Hedge: {
        "delay": [True, "1", math.nan, -1, math.inf, dt.timedelta(seconds=-1)],
        "percentile": [*RATIO, 0],
        "window": COUNT,
        "min_samples": [*COUNT, 2000],  # more than the window: never warm
        "warmup_delay": [s for s in SECONDS if s is not None],
        "min_delay": [s for s in SECONDS if s is not None],
        "max_hedged_attempts": [*COUNT, 0, 5],
        "budget": [0.2, "budget", object()],
        "ratio": [*RATIO, 0],
        "non_fatal": "exception spec: tests/test_outcome.py",
        "non_fatal_result": CALLABLE,
        "discard_result": CALLABLE,
        "name": NAME,
        "clock": CLOCK,
    },
    Timeout: {"seconds": SECONDS, "name": NAME, "clock": CLOCK},
    resilience.deadline: {"seconds": [True, "1", None, math.nan, -1], "clock": CLOCK},
    Fallback: {
        "fallback": "any value or callable: tests/policies/test_fallback.py",
        "on": "exception spec: tests/test_outcome.py",
        "on_result": CALLABLE,
        "name": NAME,
    },
}

GRPC_CODES = ["UNAVAILABLE", 14, grpc.StatusCode.UNAVAILABLE, [14], {grpc.StatusCode.OK}]
GRPC_CLIENT: dict[str, list[object] | str] = {
    "target": NAME,
    "breaker": [3, "on", None, object()],
    "breaker_scope": ["origin", None, 3],
    "retry": [3, "yes", None, object()],
    "retry_codes": GRPC_CODES,
    "failure_codes": GRPC_CODES,
    "total_timeout": [s for s in SECONDS if s is not None],
    "attempt_timeout": [s for s in SECONDS if s is not None],
    "concurrency_limit": [3, "aimd", None, AIMDLimit()],
    "clock": CLOCK,
}
GRPC_SERVER: dict[str, list[object] | str] = {
    "max_seconds": SECONDS,
    "default": [True, "1", math.nan, -1, math.inf],
    "safety_margin": [True, "1", None, math.nan, -1, 30.0],
    "map_errors": FLAG,
    "clock": CLOCK,
}
# The sync interceptor refuses any hedge (MisuseError, a TypeError naming hedge=).
TABLE[resilience_grpc.ResilientClientInterceptor] = {**GRPC_CLIENT, "hedge": [3, Hedge()]}
TABLE[resilience_grpc.AsyncResilientClientInterceptor] = {
    **GRPC_CLIENT,
    "hedge": [3, True, "hedge"],
}
TABLE[resilience_grpc.DeadlineServerInterceptor] = GRPC_SERVER
TABLE[resilience_grpc.AsyncDeadlineServerInterceptor] = GRPC_SERVER
TABLE[resilience_grpc.channel_options] = {
    "options": ["abc", 3, [("a",)], [(1, 2)], [3]],
    "max_reconnect_backoff": [True, "4", math.nan, -1, 0, 0.0001, 2**31],
}

# What every constructor needs to be built at all, so one bad value is the only fault.
REQUIRED: dict[Callable[..., Any], dict[str, object]] = {
    CircuitBreaker: {"name": "misuse"},
    CountWindow: {"size": 10},
    TimeWindow: {"seconds": 10},
    Retry: {"on": Exception},
    Bulkhead: {"max_concurrent": 2},
    Timeout: {"seconds": 1.0},
    resilience.deadline: {"seconds": 1.0},
    Fallback: {"fallback": "x", "on": Exception},
    resilience_grpc.ResilientClientInterceptor: {"target": "misuse:50051"},
    resilience_grpc.AsyncResilientClientInterceptor: {"target": "misuse:50051"},
}

CASES = [
    pytest.param(factory, param, value, id=f"{factory.__name__}-{param}-{value!r}")
    for factory, params in TABLE.items()
    for param, values in params.items()
    if not isinstance(values, str)
    for value in values
]


@pytest.mark.parametrize(("factory", "param", "value"), CASES)
def test_bad_values_fail_at_construction_naming_the_parameter(
    factory: Callable[..., Any], param: str, value: object
) -> None:
    """TypeError or ValueError, and the message names `param=`."""
    kwargs = {**REQUIRED.get(factory, {}), param: value}
    with pytest.raises((TypeError, ValueError)) as caught:
        factory(**kwargs)
    assert f"{param}" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("factory", list(TABLE), ids=lambda f: f.__name__)
def test_every_parameter_is_in_the_table(factory: Callable[..., Any]) -> None:
    """A new constructor parameter must come with its bad values here."""
    parameters = set(inspect.signature(factory).parameters) - {"self"}
    assert parameters == set(TABLE[factory]), parameters ^ set(TABLE[factory])


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (Timeout, {"seconds": dt.timedelta(milliseconds=1500)}),
        (resilience.deadline, {"seconds": dt.timedelta(seconds=2)}),
        (Bulkhead, {"max_concurrent": 1, "max_wait": dt.timedelta(seconds=1)}),
        (Retry, {"on": Exception, "max_retry_after": dt.timedelta(minutes=1)}),
        (Retry, {"on": Exception, "wait": dt.timedelta(milliseconds=10)}),
        (Backoff, {"initial": dt.timedelta(milliseconds=100), "maximum": dt.timedelta(seconds=5)}),
        (RetryBudget, {"window": dt.timedelta(seconds=30)}),
        (Hedge, {"delay": dt.timedelta(milliseconds=20)}),
        (Hedge, {"warmup_delay": dt.timedelta(0), "min_delay": dt.timedelta(milliseconds=2)}),
        (TimeWindow, {"seconds": dt.timedelta(minutes=1)}),
        (CircuitBreaker, {"name": "td", "open_duration": dt.timedelta(seconds=10)}),
        (ConcurrencyLimit, {"max_wait": dt.timedelta(seconds=1)}),
        (AIMDLimit, {"timeout": dt.timedelta(seconds=1), "window": dt.timedelta(seconds=1)}),
        (Gradient2Limit, {"window": dt.timedelta(milliseconds=100)}),
        (VegasLimit, {"window": dt.timedelta(milliseconds=100)}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_seconds_parameters_accept_a_timedelta(
    factory: Callable[..., Any], kwargs: dict[str, object]
) -> None:
    """Wherever seconds are taken, a datetime.timedelta is taken too."""
    factory(**kwargs)


class AsyncCallable:
    async def __call__(self, value: int) -> int:
        return value


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_a_partial_of_an_async_callable_object_is_decorated_as_async(kind: str) -> None:
    """`functools.partial(obj)` where `obj.__call__` is `async def` gets the async wrapper."""
    import functools

    policy, _ = POLICIES[kind]()
    decorated = policy(functools.partial(AsyncCallable(), 42))
    assert asyncio.run(decorated()) == 42
