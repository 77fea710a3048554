"""Metrics and events of the gRPC interceptors (docs/guide/grpc.md, "Metrics and events").

The same metric names and events as the httpx transport: the breaker, retry
and budget are named after the target (or target + method); no request data.
"""

from __future__ import annotations

from typing import Any

import grpc
from prometheus_client import CollectorRegistry, generate_latest

import resilience
import resilience.prometheus as rp
from resilience.events import RetryScheduled, StateChanged
from resilience.grpc import ResilientClientInterceptor, channel_options
from resilience.testing import FakeClock

from .conftest import Step, SyncServer, sync_methods


def test_metrics_and_events_are_named_after_the_target(server: SyncServer) -> None:
    """docs/guide/grpc.md: resilience_* series named after the target; retry.scheduled events."""
    registry = CollectorRegistry()
    rp.register(registry)
    events: list[Any] = []
    unsubscribe = resilience.events.subscribe(events.append)
    try:
        clock = FakeClock()
        breaker = resilience.CircuitBreaker(server.target, consecutive_failures=5, clock=clock)
        interceptor = ResilientClientInterceptor(target=server.target, breaker=breaker, clock=clock)
        channel = grpc.intercept_channel(
            grpc.insecure_channel(server.target, options=channel_options()), interceptor
        )
        server.script.add(Step(grpc.StatusCode.UNAVAILABLE))
        sync_methods(channel)["unary"](b"secret-payload", metadata=(("user", "alice"),))
        text = generate_latest(registry).decode()
    finally:
        unsubscribe()
    target = server.target
    assert f'resilience_breaker_calls_total{{name="{target}",outcome="failure"}} 1.0' in text
    assert f'resilience_breaker_calls_total{{name="{target}",outcome="success"}} 1.0' in text
    assert (
        f'resilience_retry_calls_total{{name="{target}",outcome="success_after_retry"}} 1.0' in text
    )
    assert f'resilience_retry_attempts_total{{name="{target}"}} 1.0' in text
    assert "secret-payload" not in text
    assert "alice" not in text
    scheduled = [event for event in events if isinstance(event, RetryScheduled)]
    assert [(event.name, event.attempt, event.error_type) for event in scheduled] == [
        (target, 1, "_InactiveRpcError")
    ]
    assert not [event for event in events if isinstance(event, StateChanged)]
