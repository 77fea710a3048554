"""The default retries and budgets are per origin and named after it, like the breakers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.core import Metric

import resilience.transport
from resilience import BreakerRegistry, ResilientTransport
from resilience._tracking import live
from resilience.events import RetryBudgetExhausted, RetryScheduled
from resilience.prometheus import ResilienceCollector
from resilience.testing import FakeClock


def always_503(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503)


class Frozen(FakeClock):
    """A fake clock that waits without moving: every retry falls in one budget window."""

    def sleep(self, seconds: float) -> None:
        pass


def samples(family: str, name: str) -> dict[str, float]:
    """The samples of one metric family for one policy name, by their other labels."""
    found: dict[str, float] = {}
    metric: Metric
    for metric in ResilienceCollector().collect():
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.labels.get("name") == name:
                found[sample.labels.get("outcome", sample.name)] = sample.value
    return found


def test_each_origin_retries_with_its_own_name_and_budget() -> None:
    """Events, budgets and Prometheus say which downstream: scheme://host:port."""
    a, b = f"{uuid.uuid4().hex}.test", f"{uuid.uuid4().hex}.test"
    transport = ResilientTransport(httpx.MockTransport(always_503), clock=FakeClock())
    events: list[object] = []
    assert transport.retry is not None
    transport.retry.events.subscribe(events.append)
    with httpx.Client(transport=transport) as http:
        http.get(f"http://{a}/x")
        http.get(f"https://{b}:8443/y")
    scheduled = [e.name for e in events if isinstance(e, RetryScheduled)]
    assert scheduled == [f"http://{a}:80"] * 3 + [f"https://{b}:8443"] * 3
    by_name = {retry.name: retry for retry in live("retry")}
    for origin in (f"http://{a}:80", f"https://{b}:8443"):
        assert by_name[origin].budget is not None
        assert by_name[origin].budget.name == origin
        assert samples("resilience_retry_calls", origin)["failed_after_retry"] == 1
        assert samples("resilience_retry_attempts", origin) == {
            "resilience_retry_attempts_total": 3
        }
    # The default policy itself is not exported (its copies are): no double counting.
    assert transport.retry not in live("retry")
    assert transport.retry.name == "http"
    assert transport.retry.metrics()["failed_after_retry"] == 2  # the copies, added up


def test_a_spent_budget_stops_retries_to_its_origin_only() -> None:
    """One failing downstream exhausts its own budget; another one still gets retries."""
    bad, good = f"{uuid.uuid4().hex}.test", f"{uuid.uuid4().hex}.test"
    transport = ResilientTransport(httpx.MockTransport(always_503), clock=Frozen(), breaker=False)
    exhausted: list[str] = []
    assert transport.retry is not None
    transport.retry.events.subscribe(
        lambda e: exhausted.append(e.name) if isinstance(e, RetryBudgetExhausted) else None
    )
    with httpx.Client(transport=transport) as http:
        for _ in range(60):  # 3 retries each: far beyond 20% + 10/s over 10 s
            http.get(f"http://{bad}/")
        assert exhausted
        assert set(exhausted) == {f"http://{bad}:80"}
        response = http.get(f"http://{good}/")
    assert response.extensions["resilience"]["attempts"] == 4
    assert set(exhausted) == {f"http://{bad}:80"}


def test_at_most_1000_origins_keep_a_retry_and_counts_survive() -> None:
    """The oldest origin's retry is dropped past 1,000; its counts stay in metrics()."""
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), breaker=False
    )
    with httpx.Client(transport=transport) as http:
        for number in range(1001):
            http.get(f"http://origin-{number}.test/")
    assert transport.retry is not None
    assert len(transport.retry._origins) == 1000  # type: ignore[attr-defined]
    assert "http://origin-0.test:80" not in transport.retry._origins  # type: ignore[attr-defined]
    assert transport.retry.metrics()["success_first_try"] == 1001


@pytest.mark.parametrize("parsed", [True, False], ids=["fast", "public-api"])
def test_origin_names_are_the_same_either_way(
    parsed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parsed URL parts httpx keeps (the fast path) and its public API give the same names."""
    assert resilience.transport._PARSED_URLS  # the installed httpx takes the fast path
    monkeypatch.setattr(resilience.transport, "_PARSED_URLS", parsed)
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), retry=False
    )
    with httpx.Client(transport=transport) as http:
        for url in (
            "http://a.test/",
            "http://a.test:80/x",
            "https://user:secret@A.Test:443/",
            "http://a.test:8080/",
            "http://ünïcode.test/",
            "http://[::1]:81/",
        ):
            http.get(url)
    registry = transport.breakers
    assert isinstance(registry, BreakerRegistry)
    assert sorted(breaker.name for breaker in registry) == [
        "http://[::1]:81",
        "http://a.test:80",
        "http://a.test:8080",
        "http://ünïcode.test:80",
        "https://a.test:443",
    ]
