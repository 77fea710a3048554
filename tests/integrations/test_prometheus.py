from __future__ import annotations

import datetime
import gc
import math
import socket
import urllib.request
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import resilience
import resilience.prometheus as rp
from resilience.testing import FakeClock


class Transient(Exception):
    pass


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse the exposition text as Prometheus would: sample name -> labels -> value."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, metric: str, /, **labels: str) -> float:
    return samples[metric][tuple(sorted(labels.items()))]


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    rp.register(registry)
    return registry


def test_breaker_state_has_one_series_per_state_from_creation(registry: CollectorRegistry) -> None:
    """A new breaker shows closed=1 and every other state 0, before any call."""
    breaker = resilience.CircuitBreaker("prom-new")
    samples = scrape(registry)
    states = {
        dict(labels)["state"]: v
        for labels, v in samples["resilience_breaker_state"].items()
        if dict(labels)["name"] == "prom-new"
    }
    assert states == {
        s.value: (1.0 if s is resilience.State.CLOSED else 0.0) for s in resilience.State
    }
    del breaker


def test_breaker_counters_transitions_and_rate(registry: CollectorRegistry) -> None:
    """Calls by outcome, transitions and the failure rate follow the breaker."""
    clock = FakeClock()
    breaker = resilience.CircuitBreaker(
        "prom-trip",
        failure_rate_threshold=None,
        consecutive_failures=2,
        minimum_calls=2,
        window=resilience.CountWindow(4),
        clock=clock,
    )
    assert math.isnan(value(scrape(registry), "resilience_breaker_failure_rate", name="prom-trip"))
    breaker.acquire().record_success()
    breaker.acquire().record_failure()
    breaker.acquire().record_failure()
    with pytest.raises(resilience.CircuitOpenError):
        breaker.acquire()
    samples = scrape(registry)
    assert value(samples, "resilience_breaker_state", name="prom-trip", state="open") == 1.0
    assert (
        value(samples, "resilience_breaker_calls_total", name="prom-trip", outcome="failure") == 2
    )
    assert (
        value(samples, "resilience_breaker_calls_total", name="prom-trip", outcome="rejected") == 1
    )
    assert (
        value(
            samples,
            "resilience_breaker_transitions_total",
            name="prom-trip",
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert value(samples, "resilience_breaker_failure_rate", name="prom-trip") == pytest.approx(
        2 / 3
    )


def test_retry_budget_bulkhead_and_timeout_series(registry: CollectorRegistry) -> None:
    """The other policies' counters are exported under their own names."""
    budget = resilience.RetryBudget("prom-budget", ratio=0, min_per_second=0.1, window=10)
    retry = resilience.Retry(on=Transient, attempts=3, wait=0, budget=budget, name="prom-retry")
    calls = iter([Transient(), "ok", Transient(), Transient()])

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry.call(flaky) == "ok"
    with pytest.raises(Transient):
        retry.call(flaky)  # the budget's single retry is spent
    bulkhead = resilience.Bulkhead(1, name="prom-bulkhead")
    with bulkhead, pytest.raises(resilience.BulkheadFullError):
        bulkhead.call(lambda: None)
    timeout = resilience.Timeout(1, name="prom-timeout")
    samples = scrape(registry)
    assert (
        value(
            samples,
            "resilience_retry_calls_total",
            name="prom-retry",
            outcome="success_after_retry",
        )
        == 1
    )
    # The second call was refused its retry by the budget: never retried.
    assert (
        value(
            samples,
            "resilience_retry_calls_total",
            name="prom-retry",
            outcome="failed_not_retryable",
        )
        == 1
    )
    assert value(samples, "resilience_retry_attempts_total", name="prom-retry") == 1
    assert value(samples, "resilience_retry_budget_exhausted_total", name="prom-budget") == 1
    assert value(samples, "resilience_bulkhead_in_flight", name="prom-bulkhead") == 0
    assert value(samples, "resilience_bulkhead_rejected_total", name="prom-bulkhead") == 1
    assert value(samples, "resilience_deadline_exceeded_total", name="prom-timeout") == 0
    del timeout


def test_registering_twice_is_harmless() -> None:
    """register() is idempotent per registry: no DuplicateTimeseries."""
    registry = CollectorRegistry()
    assert rp.register(registry) is rp.register(registry)
    with pytest.raises(TypeError, match="registry="):
        rp.register("default")  # type: ignore[arg-type]


def test_a_second_collector_is_a_duplicate() -> None:
    """describe() names the metrics, so a registry refuses a second collector."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(rp.ResilienceCollector())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(rp.ResilienceCollector())


def test_breakers_created_later_and_dropped_breakers(registry: CollectorRegistry) -> None:
    """The collector follows live policies: new ones appear, collected ones go."""
    breaker = resilience.CircuitBreaker("prom-later")
    assert ("name", "prom-later") in {
        label
        for labels in scrape(registry)["resilience_breaker_slow_calls_total"]
        for label in labels
    }
    del breaker
    gc.collect()
    assert all(
        dict(labels)["name"] != "prom-later"
        for labels in scrape(registry).get("resilience_breaker_slow_calls_total", {})
    )


def test_transport_labels_are_origins_not_urls(registry: CollectorRegistry) -> None:
    """Per-origin breakers label by scheme://host:port; paths and queries never appear."""
    transport = resilience.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), retry=False
    )
    with httpx.Client(transport=transport) as client:
        for i in range(20):
            client.get(f"http://api.test/users/{i}?token=secret{i}")
    names = {
        dict(labels)["name"] for labels in scrape(registry)["resilience_breaker_slow_calls_total"]
    }
    assert "http://api.test:80" in names
    assert not any("users" in name or "secret" in name for name in names)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serving_helpers() -> None:
    """The WSGI app, the ASGI app and the standalone server all serve the metrics."""
    registry = CollectorRegistry()
    breaker = resilience.CircuitBreaker("prom-served")
    wsgi = httpx.Client(transport=httpx.WSGITransport(app=rp.make_wsgi_app(registry)))
    assert 'name="prom-served"' in wsgi.get("http://metrics/").text
    assert callable(rp.make_asgi_app(registry))
    port = free_port()
    server, thread = rp.start_http_server(port, registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert b'resilience_breaker_state{name="prom-served"' in reply.read()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    del breaker


def test_grafana_dashboard_uses_only_exported_metric_names() -> None:
    """Every metric the dashboard queries is one the collector exports."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bresilience_[a-z_]+", expr)}
    exported = {family.name for family in rp.ResilienceCollector().describe()}
    counters = {f"{name}_total" for name in exported}
    assert used
    assert used <= exported | counters


def test_duration_histogram_for_breakers_that_record_durations(registry: CollectorRegistry) -> None:
    """record_durations=True exports resilience_call_duration_seconds by outcome."""
    clock = FakeClock()
    breaker = resilience.CircuitBreaker(
        "prom-durations", record_durations=True, consecutive_failures=10, clock=clock
    )

    @breaker
    def work(seconds: float, fail: bool = False) -> None:
        clock.sleep(seconds)
        if fail:
            raise Transient

    work(0.02)
    work(0.3)
    with pytest.raises(Transient):
        work(3.0, fail=True)
    samples = scrape(registry)
    bucket = "resilience_call_duration_seconds_bucket"
    assert value(samples, bucket, name="prom-durations", outcome="success", le="0.025") == 1
    assert value(samples, bucket, name="prom-durations", outcome="success", le="0.5") == 2
    assert value(samples, bucket, name="prom-durations", outcome="failure", le="2.5") == 0
    assert value(samples, bucket, name="prom-durations", outcome="failure", le="+Inf") == 1
    assert value(
        samples, "resilience_call_duration_seconds_sum", name="prom-durations", outcome="success"
    ) == pytest.approx(0.32)
    assert (
        value(
            samples,
            "resilience_call_duration_seconds_count",
            name="prom-durations",
            outcome="failure",
        )
        == 1
    )
    with pytest.raises(TypeError, match="record_durations="):
        resilience.CircuitBreaker("x", record_durations="yes")  # type: ignore[arg-type]


def test_breakers_sharing_a_name_are_one_series(registry: CollectorRegistry) -> None:
    """Two breakers called the same (two transports to one origin) are summed, not dropped."""
    first = resilience.CircuitBreaker("prom-twin", consecutive_failures=1)
    second = resilience.CircuitBreaker("prom-twin", consecutive_failures=5)
    for _ in range(3):
        first.acquire().record_success()
    for _ in range(5):
        second.acquire().record_success()
    first.acquire().record_failure()  # first opens; second stays closed
    samples = scrape(registry)
    assert (
        value(samples, "resilience_breaker_calls_total", name="prom-twin", outcome="success") == 8
    )
    assert value(samples, "resilience_breaker_state", name="prom-twin", state="open") == 1
    assert value(samples, "resilience_breaker_state", name="prom-twin", state="closed") == 1


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: rp.start_http_server(True), TypeError, "port="),
        (lambda: rp.start_http_server("9464"), TypeError, "port="),
        (lambda: rp.start_http_server(9464.0), TypeError, "port="),
        (lambda: rp.start_http_server(-1), ValueError, "port="),
        (lambda: rp.start_http_server(70000), ValueError, "port="),
        (lambda: rp.start_http_server(9464, addr=""), ValueError, "addr="),
        (lambda: rp.start_http_server(9464, addr=None), TypeError, "addr="),
        (lambda: rp.start_http_server(9464, registry="x"), TypeError, "registry="),
        (lambda: rp.make_asgi_app(registry=3), TypeError, "registry="),
        (lambda: rp.make_wsgi_app(registry=3), TypeError, "registry="),
        (lambda: rp.register(registry=object()), TypeError, "registry="),
        (lambda: rp.MultiprocessExporter(interval=0), ValueError, "interval="),
        (lambda: rp.MultiprocessExporter(interval=-1), ValueError, "interval="),
        (lambda: rp.MultiprocessExporter(interval=math.nan), ValueError, "interval="),
        (lambda: rp.MultiprocessExporter(interval=math.inf), ValueError, "interval="),
        (lambda: rp.MultiprocessExporter(interval=True), TypeError, "interval="),
        (lambda: rp.MultiprocessExporter(interval="1"), TypeError, "interval="),
    ],
)
def test_bad_arguments(call: Any, error: type[Exception], match: str) -> None:
    """Every public function validates its arguments (nothing is bound or registered)."""
    with pytest.raises(error, match=match):
        call()


def test_interval_takes_a_timedelta() -> None:
    """MultiprocessExporter(interval=timedelta) is seconds too."""
    assert rp.MultiprocessExporter(interval=datetime.timedelta(seconds=2)).interval == 2.0


def test_a_timeout_refused_before_the_call_is_counted(registry: CollectorRegistry) -> None:
    """resilience_deadline_exceeded_total also counts calls refused with the deadline spent."""
    clock = FakeClock()
    timeout = resilience.Timeout(1, name="prom-spent", clock=clock)
    with resilience.deadline(0, clock=clock), pytest.raises(resilience.DeadlineExceededError):
        timeout.call(lambda: None)
    assert value(scrape(registry), "resilience_deadline_exceeded_total", name="prom-spent") == 1
    del timeout


def test_fallback_uses_are_exported(registry: CollectorRegistry) -> None:
    """resilience_fallback_used_total counts the calls a fallback answered, per name."""
    fallback = resilience.Fallback(0, on=Transient, name="prom-fallback")

    @fallback
    def price() -> int:
        raise Transient

    assert [price(), price()] == [0, 0]
    assert value(scrape(registry), "resilience_fallback_used_total", name="prom-fallback") == 2


def test_fallbacks_are_found_without_being_told(registry: CollectorRegistry) -> None:
    """Like every other policy, a Fallback is exported from its creation."""
    fallback = resilience.Fallback(0, on=Transient, name="prom-fallback-found")
    samples = scrape(registry).get("resilience_fallback_used_total", {})
    assert (("name", "prom-fallback-found"),) in samples
    del fallback


@pytest.mark.anyio
async def test_middleware_counts_are_exported(
    registry: CollectorRegistry, anyio_backend: str
) -> None:
    """Deadline headers received, invalid, clamped; answers: expired, deadline_exceeded, shed."""
    from resilience.middleware import ASGIDeadlineMiddleware

    errors = {
        "/late": resilience.DeadlineExceededError(),
        "/shed": resilience.BulkheadFullError("pool", 1),
    }

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] in errors:
            raise errors[scope["path"]]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = f"prom-mw-{anyio_backend}"  # the other backend's run may not be collected yet
    middleware = ASGIDeadlineMiddleware(app, max_seconds=5, name=mw)
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for header in ("800", "99999", "soon", "0"):
            await client.get("/", headers={"x-resilience-deadline-ms": header})
        await client.get("/late")
        await client.get("/shed")
        await client.get("/shed")
    samples = scrape(registry)
    assert value(samples, "resilience_middleware_deadline_requests_total", name=mw) == 3
    assert value(samples, "resilience_middleware_invalid_deadlines_total", name=mw) == 1
    assert value(samples, "resilience_middleware_clamped_deadlines_total", name=mw) == 1
    responses = "resilience_middleware_responses_total"
    assert value(samples, responses, name=mw, outcome="expired") == 1
    assert value(samples, responses, name=mw, outcome="deadline_exceeded") == 1
    assert value(samples, responses, name=mw, outcome="shed") == 2
    del middleware


@pytest.mark.anyio
async def test_fastapi_middleware_and_handlers_are_found(
    registry: CollectorRegistry, anyio_backend: str
) -> None:
    """No handle on the instance FastAPI builds: the collector finds it (and the handlers)."""
    from fastapi import FastAPI

    import resilience.starlette
    from resilience.middleware import ASGIDeadlineMiddleware

    app = FastAPI()

    @app.get("/")
    async def late() -> None:
        raise resilience.DeadlineExceededError()

    found, handlers = f"prom-fastapi-{anyio_backend}", f"prom-handlers-{anyio_backend}"
    app.add_middleware(ASGIDeadlineMiddleware, name=found)
    other = FastAPI()
    other.add_api_route("/", late)
    resilience.starlette.install_exception_handlers(other, name=handlers)
    for target in (app, other):
        transport = httpx.ASGITransport(app=target)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/")).status_code == 504
    samples = scrape(registry)
    responses = "resilience_middleware_responses_total"
    for name in (found, handlers):
        assert value(samples, responses, name=name, outcome="deadline_exceeded") == 1
    # The handlers see no deadline headers: they have answer series only.
    assert value(samples, "resilience_middleware_invalid_deadlines_total", name=found) == 0
    assert not any(
        dict(labels)["name"] == handlers
        for labels in samples["resilience_middleware_invalid_deadlines_total"]
    )
    assert not any(
        dict(labels) == {"name": handlers, "outcome": "expired"} for labels in samples[responses]
    )


def test_concurrency_limit_series(registry: CollectorRegistry) -> None:
    """Limit, in-flight, rejections and drops of a ConcurrencyLimit, by name."""
    clock = FakeClock()
    limit = resilience.ConcurrencyLimit(
        resilience.AIMDLimit(initial_limit=2, window=None), name="prom-limit", clock=clock
    )
    held = limit.acquire()
    with limit, pytest.raises(resilience.ConcurrencyLimitExceededError):
        limit.call(lambda: None)
    dropped = limit.acquire()
    clock.advance(0.1)
    dropped.record_drop()  # AIMD: int(2 * 0.9) = 1
    samples = scrape(registry)
    assert value(samples, "resilience_concurrency_limit", name="prom-limit") == 1
    assert value(samples, "resilience_concurrency_in_flight", name="prom-limit") == 1
    assert value(samples, "resilience_concurrency_rejected_total", name="prom-limit") == 1
    assert value(samples, "resilience_concurrency_dropped_total", name="prom-limit") == 1
    # A limit is not a bulkhead in the metrics: no resilience_bulkhead_* series for it.
    assert all(
        dict(labels).get("name") != "prom-limit"
        for labels in samples.get("resilience_bulkhead_in_flight", {})
    )
    held.release()
    del limit


def test_concurrency_limit_gauges_in_multiprocess_mode() -> None:
    """The exporter knows how to aggregate the new gauges across workers (their sum)."""
    exporter = rp.MultiprocessExporter()
    for name in ("resilience_concurrency_limit", "resilience_concurrency_in_flight"):
        assert exporter._metrics[name]._multiprocess_mode == "livesum"  # type: ignore[union-attr]


async def _hedged_calls(policy: resilience.Hedge, clock: FakeClock) -> None:
    async def slow_then_fast() -> str:
        return "ok"

    await policy.acall(slow_then_fast)


def test_hedge_series(registry: CollectorRegistry) -> None:
    """resilience_hedge_calls_total and resilience_hedges_total{outcome} follow `metrics()`."""
    import asyncio

    clock = FakeClock()
    policy = resilience.Hedge(name="prom-hedge", delay=0.0, ratio=0.05, clock=clock)
    for _ in range(3):
        asyncio.run(_hedged_calls(policy, clock))
    counts = policy.metrics()
    samples = scrape(registry)
    assert value(samples, "resilience_hedge_calls_total", name="prom-hedge") == 3
    for outcome in ("sent", "won", "refused", "deadline"):
        assert (
            value(samples, "resilience_hedges_total", name="prom-hedge", outcome=outcome)
            == (counts[outcome])
        )
    assert counts["sent"] >= 1
    # The hedge's own budget is not a retry budget: no series of its own.
    assert not any(
        dict(labels)["name"].startswith("prom-hedge")
        for labels in samples.get("resilience_retry_budget_exhausted_total", {})
    )
