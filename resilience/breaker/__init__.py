"""The circuit breaker: state machine, sliding windows and registry."""

from ._breaker import BreakerMetrics, CircuitBreaker, Permit, exponential_open_duration
from ._window import CountWindow, TimeWindow

__all__ = [
    "BreakerMetrics",
    "CircuitBreaker",
    "CountWindow",
    "Permit",
    "TimeWindow",
    "exponential_open_duration",
]
