"""Type-checked, never executed: what users' type checkers see of the API.

`make test` runs `mypy --strict` on this file. A line marked
`# type: ignore[...]` must stay an error; mypy's warn_unused_ignores says so
if it stops being one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, assert_type

import resilience
from resilience import Outcome, Pipeline, Policy, State, compose
from resilience.events import Event, StateChanged
from resilience.testing import FakeClock

P = ParamSpec("P")
R = TypeVar("R")


class Passthrough(Policy):
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await fn(*args, **kwargs)


policy = Passthrough()


@policy
def charge(order_id: str, *, amount: int = 1) -> float:
    return 1.0


@policy
async def fetch(url: str) -> bytes:
    return b""


assert_type(charge("o1", amount=2), float)
pending: object = assert_type(fetch("u"), Coroutine[Any, Any, bytes])
charge(1)  # type: ignore[arg-type]
charge("o1", amount="2")  # type: ignore[arg-type]
pending = fetch()  # type: ignore[call-arg]


class Client:
    @policy
    def get(self, path: str) -> str:
        return path

    @policy
    @classmethod
    def make(cls, base: str) -> Client:
        return cls()

    @policy
    @staticmethod
    def join(a: str, b: str) -> str:
        return a + b


assert_type(Client().get("/"), str)
assert_type(Client.make("b"), Client)
assert_type(Client.join("a", "b"), str)
Client().get(3)  # type: ignore[arg-type]

pipeline = compose(policy, Passthrough())
assert_type(pipeline, Pipeline)
assert_type(pipeline(charge)("o1"), float)
assert_type(pipeline.call(charge, "o1", amount=3), float)
pipeline.call(charge, "o1", amount="3")  # type: ignore[arg-type]


async def use_acall() -> None:
    assert_type(await policy.acall(fetch, "u"), bytes)
    await policy.acall(fetch, 1)  # type: ignore[arg-type]


breaker = resilience.CircuitBreaker("payments", clock=FakeClock())


@breaker
def pay(order_id: str, amount: int) -> bool:
    return True


@breaker
async def apay(order_id: str) -> bool:
    return True


assert_type(pay("o", 3), bool)
pay("o", "3")  # type: ignore[arg-type]
assert_type(breaker.call(pay, "o", 3), bool)
assert_type(breaker.state, State)
permit = breaker.acquire()
assert_type(permit, resilience.Permit)
permit.record(Outcome.SUCCESS)


async def use_breaker() -> None:
    assert_type(await apay("o"), bool)
    assert_type(await breaker.acall(apay, "o"), bool)
    async with breaker as token:
        assert_type(token, resilience.Permit)


registry = resilience.BreakerRegistry(max_size=10)
assert_type(registry.get("x"), resilience.CircuitBreaker)
retry = resilience.Retry(on=(ConnectionError,), attempts=3, budget=resilience.RetryBudget())


@retry
def lookup(key: str) -> int:
    return 1


@resilience.Timeout(0.5)
async def slow(key: str) -> int:
    return 1


@resilience.Fallback(0, on=ConnectionError)
@resilience.Bulkhead(4)
def guarded_lookup(key: str) -> int:
    return 1


@resilience.Hedge(delay=0.05, budget=retry.budget)
async def quote(symbol: str, *, fresh: bool = False) -> float:
    return 1.0


assert_type(lookup("k"), int)
lookup(1)  # type: ignore[arg-type]
quote(1).close()  # type: ignore[arg-type]
assert_type(guarded_lookup("k"), int)


async def use_policies() -> None:
    assert_type(await slow("k"), int)
    assert_type(await quote("ACME", fresh=True), float)
    assert_type(await resilience.Hedge().acall(quote, "ACME"), float)
    async with resilience.deadline(1.0) as current:
        assert_type(current, resilience.Deadline)
        assert_type(resilience.remaining(), float | None)
    async with resilience.Bulkhead(2):
        pass


assert_type(resilience.parse_retry_after("120"), float | None)
assert_type(resilience.Backoff()(1), float)


def make_clients() -> None:
    import httpx

    sync_client = httpx.Client(transport=resilience.ResilientTransport(total_timeout=5.0))
    async_client = httpx.AsyncClient(transport=resilience.AsyncResilientTransport(http2=False))
    assert_type(resilience.ResilientTransport().retry, resilience.Retry | None)
    sync_client.close()
    del async_client


clock: resilience.Clock = FakeClock()
assert_type(clock.monotonic(), float)
assert_type(Outcome("success"), Outcome)
event: Event = StateChanged(
    name="p", time=0.0, from_state=State.CLOSED, to_state=State.OPEN, reason="manual"
)
StateChanged(name="p", time=0.0)  # type: ignore[call-arg]
error = resilience.CircuitOpenError("p", State.OPEN, 1.0)
assert_type(error.retry_after, float | None)
assert_type(resilience.DeadlineExceededError(), resilience.DeadlineExceededError)
