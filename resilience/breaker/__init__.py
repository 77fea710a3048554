"""The circuit breaker: state machine, sliding windows and registry."""

from ._breaker import BreakerMetrics, CircuitBreaker, Permit, exponential_open_duration
from ._registry import BreakerRegistry
from ._window import CountWindow, TimeWindow

__all__ = [
    "BreakerMetrics",
    "BreakerRegistry",
    "CircuitBreaker",
    "CountWindow",
    "Permit",
    "TimeWindow",
    "exponential_open_duration",
]
