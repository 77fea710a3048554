"""One caller -> callee hop's settings, and the resilient transport built from them.

The sidecar arm's HAProxy configuration is generated from the same settings
(`_sidecar.haproxy_config`), so the two arms cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

import resilience


@dataclass(frozen=True)
class BreakerSettings:
    """A per-callee circuit breaker: when it opens, and for how long."""

    consecutive_failures: int
    failure_rate_threshold: float
    minimum_calls: int
    window_seconds: float
    open_duration: float


@dataclass(frozen=True)
class HopSettings:
    """What a caller does on its calls to one callee.

    `limit_timeout` is the latency the caller accepts, the yardstick of its
    adaptive concurrency limit (AIMD: a window whose mean latency is above it
    counts as a drop); the limit starts at `initial_limit`, never exceeds
    `max_limit`, and a call waits at most `max_wait` for a slot.
    """

    caller: str
    callee: str
    total_timeout: float
    attempt_timeout: float | None
    attempts: int  # 1: no retry
    breaker: BreakerSettings | None
    limit_timeout: float
    initial_limit: int = 20
    max_limit: int = 200
    max_wait: float = 0.0
    retry_statuses: tuple[int, ...] = (500, 502, 503, 504)
    idempotency_key: bool = False

    @property
    def per_attempt(self) -> float:
        """The longest one attempt may take."""
        return self.attempt_timeout if self.attempt_timeout is not None else self.total_timeout


def resilient_transport(hop: HopSettings) -> resilience.AsyncResilientTransport:
    """The protected arm's transport for this hop."""
    statuses = frozenset(hop.retry_statuses)
    retry: resilience.Retry | bool = False
    if hop.attempts > 1:
        retry = resilience.Retry(
            on=(httpx.TransportError,),
            attempts=hop.attempts,
            budget=resilience.RetryBudget(hop.callee),
            retry_if_result=lambda reply: reply.status_code in statuses,
            name=f"{hop.caller}->{hop.callee}",
        )
    breaker: resilience.CircuitBreaker | bool = False
    if hop.breaker is not None:
        breaker = resilience.CircuitBreaker(
            hop.callee,
            consecutive_failures=hop.breaker.consecutive_failures,
            failure_rate_threshold=hop.breaker.failure_rate_threshold,
            minimum_calls=hop.breaker.minimum_calls,
            window=resilience.TimeWindow(seconds=hop.breaker.window_seconds),
            open_duration=hop.breaker.open_duration,
        )

    def limit(origin: str) -> resilience.ConcurrencyLimit:
        # AIMD, the loss-based algorithm for clients: a hung callee gives no
        # error, only timeouts, and those are drops; a backoff of 0.5 halves
        # the limit per window of drops, not by 10%.
        algorithm = resilience.AIMDLimit(
            initial_limit=hop.initial_limit,
            max_limit=hop.max_limit,
            backoff_ratio=0.5,
            timeout=hop.limit_timeout,
        )
        return resilience.ConcurrencyLimit(algorithm, name=origin, max_wait=hop.max_wait)

    return resilience.AsyncResilientTransport(
        total_timeout=hop.total_timeout,
        attempt_timeout=hop.attempt_timeout,
        retry=retry,
        breaker=breaker,
        concurrency_limit=limit,
        idempotency_key=hop.idempotency_key,
        limits=httpx.Limits(max_connections=500),
    )
