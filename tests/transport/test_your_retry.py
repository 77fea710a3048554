"""A `Retry` of yours keeps retrying the transport's statuses, unless it says otherwise."""

from __future__ import annotations

import httpx
import pytest

from resilience import AsyncResilientTransport, ResilientTransport, Retry, RetryBudget
from resilience.events import RetryScheduled
from resilience.testing import FakeClock


def answers(*statuses: int, retry_after: str | None = None) -> tuple[httpx.MockTransport, list]:
    """A mock answering `statuses` in turn (then 200), and the list of requests it saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses[len(seen) - 1] if len(seen) <= len(statuses) else 200
        headers = {"Retry-After": retry_after} if retry_after and status != 200 else {}
        return httpx.Response(status, headers=headers)

    return httpx.MockTransport(handler), seen


def mine(clock: FakeClock | None = None, **config: object) -> Retry:
    """A Retry of the user's: exceptions only, no retry_if_result."""
    return Retry(on=(httpx.TransportError,), attempts=3, clock=clock or FakeClock(), **config)  # type: ignore[arg-type]


def test_your_retry_without_a_result_rule_retries_the_transports_statuses() -> None:
    """503 then 200: retried, with the server's Retry-After, counted by your Retry."""
    clock = FakeClock()
    retry = mine(clock)
    events: list[RetryScheduled] = []
    retry.events.subscribe(lambda e: events.append(e) if isinstance(e, RetryScheduled) else None)
    inner, seen = answers(503, retry_after="4")
    with httpx.Client(transport=ResilientTransport(inner, retry=retry)) as http:
        response = http.get("http://api.test/")
    assert response.status_code == 200
    assert len(seen) == 2
    assert clock.sleeps[0] >= 4.0  # never earlier than the server asked
    assert [(e.name, e.status) for e in events] == [("retry", 503)]
    assert retry.metrics()["success_after_retry"] == 1
    assert retry.retry_if_result is None  # your Retry is not changed


@pytest.mark.anyio
async def test_your_retry_serves_the_async_transport_the_same_way() -> None:
    """The async transport applies the same rule."""
    inner, seen = answers(429, 502)
    transport = AsyncResilientTransport(inner, retry=mine())
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get("http://api.test/")).status_code == 200
    assert len(seen) == 3


def test_one_retry_shared_by_transports_with_other_statuses() -> None:
    """Each transport retries its own retry_statuses with the shared Retry, unchanged."""
    retry = mine()
    first_inner, first_seen = answers(502)
    second_inner, second_seen = answers(502)
    first = ResilientTransport(first_inner, retry=retry)
    second = ResilientTransport(second_inner, retry=retry, retry_statuses={503})
    with httpx.Client(transport=first) as a, httpx.Client(transport=second) as b:
        assert a.get("http://api.test/").status_code == 200
        assert b.get("http://api.test/").status_code == 502
    assert (len(first_seen), len(second_seen)) == (2, 1)
    assert second.retry is first.retry is retry
    assert retry.retry_if_result is None


def test_your_result_rule_wins() -> None:
    """With a retry_if_result of yours, only it decides which responses are retried."""
    retry = Retry(
        on=(httpx.TransportError,),
        retry_if_result=lambda response: response.status_code == 409,
        clock=FakeClock(),
    )
    inner, seen = answers(503)
    with httpx.Client(transport=ResilientTransport(inner, retry=retry)) as http:
        assert http.get("http://api.test/").status_code == 503
    assert len(seen) == 1
    inner, seen = answers(409)
    with httpx.Client(transport=ResilientTransport(inner, retry=retry)) as http:
        assert http.get("http://api.test/").status_code == 200
    assert len(seen) == 2


def test_your_retrys_attempts_wait_and_budget_apply() -> None:
    """Your Retry's own settings decide how often and how long, not the default's."""
    clock = FakeClock()
    inner, seen = answers(503, 503, 503, 503)
    with httpx.Client(transport=ResilientTransport(inner, retry=mine(clock, wait=1.5))) as http:
        assert http.get("http://api.test/").status_code == 503
    assert len(seen) == 3  # attempts=3
    assert clock.sleeps == [1.5, 1.5]
    one_retry = RetryBudget(ratio=0, min_per_second=0.1, window=10, clock=FakeClock())
    inner, seen = answers(503, 503, 503)
    retry = mine(budget=one_retry)
    with httpx.Client(transport=ResilientTransport(inner, retry=retry)) as http:
        assert http.get("http://api.test/").status_code == 503
    assert len(seen) == 2  # the budget allowed one retry
    assert one_retry.metrics()["exhausted"] == 1
