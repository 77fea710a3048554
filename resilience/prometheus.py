"""Prometheus metrics for every policy, read at scrape time (DESIGN section 11).

```python
import resilience.prometheus

resilience.prometheus.register()  # into prometheus_client's default registry
```

A custom collector reads the counters the policies keep anyway: nothing calls
prometheus_client per request, and enabling metrics costs the calls nothing.
Policies created after `register()` are included at the next scrape; labels
are policy names only (never URLs or attempt numbers).
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.metrics import Counter, Gauge
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from ._state import State
from ._tracking import live
from ._validate import check_int, check_seconds, check_string

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "MultiprocessExporter",
    "ResilienceCollector",
    "make_asgi_app",
    "make_wsgi_app",
    "register",
    "start_http_server",
]

_STATES = tuple(State)
_OUTCOMES = ("success", "failure", "ignored", "rejected")
#: Every exported metric family (counters without `_total`) and its labels.
_LABELS: dict[str, list[str]] = {
    "resilience_breaker_state": ["name", "state"],
    "resilience_breaker_calls": ["name", "outcome"],
    "resilience_breaker_slow_calls": ["name"],
    "resilience_breaker_transitions": ["name", "from_state", "to_state"],
    "resilience_breaker_failure_rate": ["name"],
    "resilience_call_duration_seconds": ["name", "outcome"],
    "resilience_retry_calls": ["name", "outcome"],
    "resilience_retry_attempts": ["name"],
    "resilience_retry_budget_exhausted": ["name"],
    "resilience_hedge_calls": ["name"],
    "resilience_hedges": ["name", "outcome"],
    "resilience_bulkhead_in_flight": ["name"],
    "resilience_bulkhead_rejected": ["name"],
    "resilience_concurrency_limit": ["name"],
    "resilience_concurrency_in_flight": ["name"],
    "resilience_concurrency_rejected": ["name"],
    "resilience_concurrency_dropped": ["name"],
    "resilience_deadline_exceeded": ["name"],
    "resilience_fallback_used": ["name"],
    "resilience_middleware_deadline_requests": ["name"],
    "resilience_middleware_invalid_deadlines": ["name"],
    "resilience_middleware_clamped_deadlines": ["name"],
    "resilience_middleware_responses": ["name", "outcome"],
}
#: What the server middleware answered itself (the keys of its `metrics()`).
_MIDDLEWARE_OUTCOMES = ("expired", "deadline_exceeded", "shed")
#: What became of the hedges a `Hedge` wanted to send (the keys of its `metrics()`).
_HEDGE_OUTCOMES = ("sent", "won", "refused", "deadline")
_RETRY_OUTCOMES = (
    "success_first_try",
    "success_after_retry",
    "failed_after_retry",
    "failed_not_retryable",
)


class ResilienceCollector(Collector):
    """Exports every live policy (breakers, retries, hedges, bulkheads, limits...) and middleware.

    Metric names and labels are those of DESIGN section 11; see the metrics
    reference in the docs.
    """

    def describe(self) -> Iterable[Metric]:
        """The metric names (so a registry detects duplicates), without reading any policy."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        """Read every live policy now and yield the metric families."""
        families = self._families()
        self._breakers(families)
        self._retries(families)
        self._budgets(families)
        self._hedges(families)
        self._bulkheads(families)
        self._limits(families)
        self._timeouts(families)
        self._fallbacks(families)
        self._middlewares(families)
        return families.values()

    @staticmethod
    def _families() -> dict[str, Any]:
        return {
            "state": GaugeMetricFamily(
                "resilience_breaker_state",
                "Circuit breaker state: 1 for the current state, 0 for the others.",
                labels=_LABELS["resilience_breaker_state"],
            ),
            "calls": CounterMetricFamily(
                "resilience_breaker_calls",
                "Calls through a circuit breaker, by outcome.",
                labels=_LABELS["resilience_breaker_calls"],
            ),
            "slow": CounterMetricFamily(
                "resilience_breaker_slow_calls",
                "Calls slower than the breaker's slow_call_duration.",
                labels=_LABELS["resilience_breaker_slow_calls"],
            ),
            "transitions": CounterMetricFamily(
                "resilience_breaker_transitions",
                "Circuit breaker state transitions.",
                labels=_LABELS["resilience_breaker_transitions"],
            ),
            "failure_rate": GaugeMetricFamily(
                "resilience_breaker_failure_rate",
                "Failure rate over the breaker's window (NaN below minimum_calls).",
                labels=_LABELS["resilience_breaker_failure_rate"],
            ),
            "durations": HistogramMetricFamily(
                "resilience_call_duration_seconds",
                "Duration of calls through a breaker that records durations, by outcome.",
                labels=_LABELS["resilience_call_duration_seconds"],
            ),
            "retry_calls": CounterMetricFamily(
                "resilience_retry_calls",
                "Calls through a retry policy, by outcome.",
                labels=_LABELS["resilience_retry_calls"],
            ),
            "retry_attempts": CounterMetricFamily(
                "resilience_retry_attempts",
                "Retries made (first attempts not included).",
                labels=_LABELS["resilience_retry_attempts"],
            ),
            "budget_exhausted": CounterMetricFamily(
                "resilience_retry_budget_exhausted",
                "Retries refused because the retry budget was spent.",
                labels=_LABELS["resilience_retry_budget_exhausted"],
            ),
            "hedge_calls": CounterMetricFamily(
                "resilience_hedge_calls",
                "Calls through a hedging policy.",
                labels=_LABELS["resilience_hedge_calls"],
            ),
            "hedges": CounterMetricFamily(
                "resilience_hedges",
                "Hedges (extra attempts): sent, won (answered first), refused by the budget, "
                "or not sent because the deadline was too near.",
                labels=_LABELS["resilience_hedges"],
            ),
            "in_flight": GaugeMetricFamily(
                "resilience_bulkhead_in_flight",
                "Calls holding a bulkhead slot.",
                labels=_LABELS["resilience_bulkhead_in_flight"],
            ),
            "bulkhead_rejected": CounterMetricFamily(
                "resilience_bulkhead_rejected",
                "Calls rejected by a full bulkhead.",
                labels=_LABELS["resilience_bulkhead_rejected"],
            ),
            "limit": GaugeMetricFamily(
                "resilience_concurrency_limit",
                "The concurrency limit in force (adaptive limits).",
                labels=_LABELS["resilience_concurrency_limit"],
            ),
            "limit_in_flight": GaugeMetricFamily(
                "resilience_concurrency_in_flight",
                "Calls holding a slot of a concurrency limit.",
                labels=_LABELS["resilience_concurrency_in_flight"],
            ),
            "limit_rejected": CounterMetricFamily(
                "resilience_concurrency_rejected",
                "Calls rejected by a concurrency limit.",
                labels=_LABELS["resilience_concurrency_rejected"],
            ),
            "limit_dropped": CounterMetricFamily(
                "resilience_concurrency_dropped",
                "Calls through a concurrency limit that ended in a drop (timeout, overload).",
                labels=_LABELS["resilience_concurrency_dropped"],
            ),
            "deadline_exceeded": CounterMetricFamily(
                "resilience_deadline_exceeded",
                "Calls cancelled by a timeout.",
                labels=_LABELS["resilience_deadline_exceeded"],
            ),
            "fallback_used": CounterMetricFamily(
                "resilience_fallback_used",
                "Calls answered by a fallback.",
                labels=_LABELS["resilience_fallback_used"],
            ),
            "mw_deadlines": CounterMetricFamily(
                "resilience_middleware_deadline_requests",
                "Requests that arrived with a usable deadline header.",
                labels=_LABELS["resilience_middleware_deadline_requests"],
            ),
            "mw_invalid": CounterMetricFamily(
                "resilience_middleware_invalid_deadlines",
                "Deadline headers ignored: malformed, negative, too long or repeated.",
                labels=_LABELS["resilience_middleware_invalid_deadlines"],
            ),
            "mw_clamped": CounterMetricFamily(
                "resilience_middleware_clamped_deadlines",
                "Deadlines larger than the middleware's max_seconds, clamped.",
                labels=_LABELS["resilience_middleware_clamped_deadlines"],
            ),
            "mw_responses": CounterMetricFamily(
                "resilience_middleware_responses",
                "Requests answered by the middleware instead of the handler, by outcome.",
                labels=_LABELS["resilience_middleware_responses"],
            ),
        }

    @staticmethod
    def _breakers(families: dict[str, Any]) -> None:
        # Breakers that share a name (two transports to one origin, say) are one
        # series: counters summed, a state shown if any of them is in it, the
        # worst failure rate.
        groups: dict[str, list[Any]] = {}
        for breaker in live("breaker"):
            groups.setdefault(breaker.name, []).append(breaker.metrics())
        for name, snapshots in sorted(groups.items()):
            states = {snapshot.state for snapshot in snapshots}
            for state in _STATES:
                families["state"].add_metric([name, state.value], 1.0 if state in states else 0.0)
            for outcome in _OUTCOMES:
                total = sum(snapshot.calls[outcome] for snapshot in snapshots)
                families["calls"].add_metric([name, outcome], total)
            families["slow"].add_metric([name], sum(s.slow_calls for s in snapshots))
            transitions: dict[tuple[State, State], int] = {}
            durations: dict[str, tuple[list[float], float]] = {}
            for snapshot in snapshots:
                for pair, count in snapshot.transitions.items():
                    transitions[pair] = transitions.get(pair, 0) + count
                for outcome, (buckets, total) in snapshot.durations.items():
                    counts, summed = durations.get(outcome, ([0.0] * len(buckets), 0.0))
                    counts = [c + count for c, (_, count) in zip(counts, buckets, strict=True)]
                    durations[outcome] = (counts, summed + total)
                    bounds = [bound for bound, _ in buckets]
            for (source, target), count in sorted(transitions.items(), key=str):
                families["transitions"].add_metric([name, source.value, target.value], count)
            for outcome, (counts, total) in sorted(durations.items()):
                families["durations"].add_metric(
                    [name, outcome],
                    buckets=[(_le(b), c) for b, c in zip(bounds, counts, strict=True)],
                    sum_value=total,
                )
            rates = [s.failure_rate for s in snapshots if not math.isnan(s.failure_rate)]
            families["failure_rate"].add_metric([name], max(rates) if rates else math.nan)

    @staticmethod
    def _retries(families: dict[str, Any]) -> None:
        for name, counts in _summed((r.name, r.metrics()) for r in live("retry")):
            for outcome in _RETRY_OUTCOMES:
                families["retry_calls"].add_metric([name, outcome], counts[outcome])
            families["retry_attempts"].add_metric([name], counts["retries"])

    @staticmethod
    def _budgets(families: dict[str, Any]) -> None:
        for name, counts in _summed((b.name, b.metrics()) for b in live("budget")):
            families["budget_exhausted"].add_metric([name], counts["exhausted"])

    @staticmethod
    def _hedges(families: dict[str, Any]) -> None:
        for name, counts in _summed((h.name, h.metrics()) for h in live("hedge")):
            families["hedge_calls"].add_metric([name], counts["calls"])
            for outcome in _HEDGE_OUTCOMES:
                families["hedges"].add_metric([name, outcome], counts[outcome])

    @staticmethod
    def _bulkheads(families: dict[str, Any]) -> None:
        for name, counts in _summed((b.name, b.metrics()) for b in live("bulkhead")):
            families["in_flight"].add_metric([name], counts["in_flight"])
            families["bulkhead_rejected"].add_metric([name], counts["rejected"])

    @staticmethod
    def _limits(families: dict[str, Any]) -> None:
        # Limits sharing a name are one series: limits and in-flight calls summed
        # (the concurrency allowed towards that downstream), counters summed.
        for name, counts in _summed((c.name, c.metrics()) for c in live("limit")):
            families["limit"].add_metric([name], counts["limit"])
            families["limit_in_flight"].add_metric([name], counts["in_flight"])
            families["limit_rejected"].add_metric([name], counts["rejected"])
            families["limit_dropped"].add_metric([name], counts["dropped"])

    @staticmethod
    def _timeouts(families: dict[str, Any]) -> None:
        for name, counts in _summed((t.name, t.metrics()) for t in live("timeout")):
            families["deadline_exceeded"].add_metric([name], counts["deadline_exceeded"])

    @staticmethod
    def _fallbacks(families: dict[str, Any]) -> None:
        for name, counts in _summed((f.name, f.metrics()) for f in live("fallback")):
            families["fallback_used"].add_metric([name], counts["used"])

    @staticmethod
    def _middlewares(families: dict[str, Any]) -> None:
        # Deadline middlewares (ASGI, WSGI) and Starlette exception handlers: the
        # handlers count only their answers, so header series come from middlewares.
        for name, counts in _summed((m.name, m.metrics()) for m in live("middleware")):
            if "with_deadline" in counts:
                families["mw_deadlines"].add_metric([name], counts["with_deadline"])
                families["mw_invalid"].add_metric([name], counts["invalid"])
                families["mw_clamped"].add_metric([name], counts["clamped"])
            for outcome in _MIDDLEWARE_OUTCOMES:
                if outcome in counts:
                    families["mw_responses"].add_metric([name, outcome], counts[outcome])


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def _summed(items: Iterable[tuple[str, dict[str, int]]]) -> list[tuple[str, dict[str, int]]]:
    """Add up the counters of policies that share a name (a metric per name, not per object)."""
    totals: dict[str, dict[str, int]] = {}
    for name, counts in items:
        into = totals.setdefault(name, dict.fromkeys(counts, 0))
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value
    return sorted(totals.items())


_registered: weakref.WeakKeyDictionary[CollectorRegistry, ResilienceCollector] = (
    weakref.WeakKeyDictionary()
)
_register_lock = threading.Lock()


def register(registry: CollectorRegistry | None = None) -> ResilienceCollector:
    """Register the collector into `registry` (default: prometheus_client's global one).

    Idempotent: registering twice into the same registry (a re-imported
    module, a test that sets up twice) returns the collector already there
    instead of raising `DuplicateTimeseries`.
    """
    target = REGISTRY if registry is None else registry
    if not isinstance(target, CollectorRegistry):
        raise TypeError(f"registry= must be a prometheus_client CollectorRegistry, got {target!r}")
    with _register_lock:
        collector = _registered.get(target)
        if collector is None:
            collector = ResilienceCollector()
            target.register(collector)
            _registered[target] = collector
        return collector


def make_asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving /metrics (mount it on your app), with the collector registered."""
    import prometheus_client

    target = REGISTRY if registry is None else registry
    register(target)
    return prometheus_client.make_asgi_app(registry=target)


def make_wsgi_app(registry: CollectorRegistry | None = None) -> Any:
    """A WSGI app serving /metrics, with the collector registered."""
    import prometheus_client

    target = REGISTRY if registry is None else registry
    register(target)
    return prometheus_client.make_wsgi_app(registry=target)


def start_http_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serve /metrics on `addr:port` from a daemon thread; return (server, thread).

    Binds to loopback by default (prometheus_client's own default is every
    interface); pass `addr="0.0.0.0"` to expose it on purpose.
    """
    import prometheus_client

    check_int(port, "port", minimum=0)
    if port > 65535:
        raise ValueError(f"port= must be a TCP port (0 to 65535; 0 picks a free one), got {port!r}")
    check_string(addr, "addr")
    target = REGISTRY if registry is None else registry
    register(target)
    server, thread = prometheus_client.start_http_server(port, addr=addr, registry=target)
    return server, thread


#: How each gauge is aggregated across worker processes in multiprocess mode.
_GAUGE_MODES = {
    "resilience_breaker_state": "livemax",  # 1 if any live worker is in that state
    "resilience_breaker_failure_rate": "livemax",
    "resilience_bulkhead_in_flight": "livesum",
    "resilience_concurrency_limit": "livesum",
    "resilience_concurrency_in_flight": "livesum",
}


class MultiprocessExporter:
    """Makes the policies visible under prometheus_client's multiprocess mode (gunicorn).

    Multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`) ignores custom collectors:
    the scraping process reads per-process value files instead. This exporter,
    started in each worker, copies what `ResilienceCollector` would report into
    ordinary prometheus_client metrics backed by those files: counters grow by
    what changed since the last copy (so the scrape sums them across workers),
    `resilience_breaker_state` and `resilience_breaker_failure_rate` are the
    maximum over live workers, `resilience_bulkhead_in_flight`,
    `resilience_concurrency_limit` and `resilience_concurrency_in_flight` their sum.
    It copies every `interval` seconds from a daemon thread, and at once on
    every breaker state change.

    ```python
    # gunicorn.conf.py
    def post_fork(server, worker):
        resilience.prometheus.MultiprocessExporter().start()

    def child_exit(server, worker):
        prometheus_client.multiprocess.mark_process_dead(worker.pid)
    ```
    """

    def __init__(self, *, interval: float = 1.0) -> None:
        self.interval = check_seconds(interval, "interval")
        self._lock = threading.Lock()
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._metrics: dict[str, Counter | Gauge] = {}
        for family in ResilienceCollector().describe():
            labels = _LABELS[family.name]
            if family.type == "histogram":
                continue  # bucket counts cannot be copied into a multiprocess histogram
            if family.type == "counter":
                self._metrics[family.name] = Counter(
                    family.name, family.documentation, labels, registry=None
                )
            else:
                self._metrics[family.name] = Gauge(
                    family.name,
                    family.documentation,
                    labels,
                    registry=None,
                    multiprocess_mode=_GAUGE_MODES[family.name],  # type: ignore[arg-type]
                )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None

    def sync(self) -> None:
        """Copy the current values into the multiprocess metrics now."""
        with self._lock:
            for family in ResilienceCollector().collect():
                metric = self._metrics.get(family.name)
                if metric is None:
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = tuple(sample.labels[label] for label in _LABELS[family.name])
                    if isinstance(metric, Counter):
                        previous = self._last.get((family.name, key), 0.0)
                        if sample.value > previous:
                            metric.labels(*key).inc(sample.value - previous)
                        self._last[(family.name, key)] = sample.value
                    else:
                        metric.labels(*key).set(sample.value)

    def start(self) -> MultiprocessExporter:
        """Copy now, then every `interval` seconds and on every state change."""
        from .events import StateChanged, global_hub

        self.sync()

        def on_event(event: object) -> None:
            if isinstance(event, StateChanged):
                self.sync()

        self._unsubscribe = global_hub.subscribe(on_event)
        self._thread = threading.Thread(target=self._run, name="resilience-metrics", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def stop(self) -> None:
        """Stop copying (a final copy is made)."""
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sync()
