"""resilience: caller-side protection for Python services.

Circuit breakers, budgeted retries, deadlines, bulkheads and fallbacks, as
decorators for sync and async functions and as an httpx transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import events
from ._backoff import Backoff, parse_retry_after
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._clock import Clock, SystemClock
from ._compose import Pipeline, Policy, compose
from ._deadline import DEADLINE_HEADER, Deadline, current_deadline, deadline, remaining
from ._fallback import Fallback
from ._hedge import Hedge
from ._limit import ConcurrencyLimit, LimitPermit
from ._limit_algorithms import AIMDLimit, Gradient2Limit, LimitAlgorithm, VegasLimit
from ._outcome import Outcome
from ._retry import Retry, RetryExhaustedError
from ._state import State
from ._timeout import Timeout
from .breaker import (
    BreakerMetrics,
    BreakerRegistry,
    CircuitBreaker,
    CountWindow,
    Permit,
    TimeWindow,
    exponential_open_duration,
)
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitExceededError,
    DeadlineExceededError,
    MisuseError,
    ResilienceError,
    RetryBudgetExhaustedError,
)

if TYPE_CHECKING:
    from .transport import (
        AsyncResilientTransport,
        HTTPCircuitOpenError,
        HTTPConcurrencyLimitExceededError,
        HTTPDeadlineExceededError,
        ResilientTransport,
    )

__all__ = [
    "DEADLINE_HEADER",
    "AIMDLimit",
    "AsyncResilientTransport",
    "Backoff",
    "BreakerMetrics",
    "BreakerRegistry",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConcurrencyLimit",
    "ConcurrencyLimitExceededError",
    "CountWindow",
    "Deadline",
    "DeadlineExceededError",
    "Fallback",
    "Gradient2Limit",
    "HTTPCircuitOpenError",
    "HTTPConcurrencyLimitExceededError",
    "HTTPDeadlineExceededError",
    "Hedge",
    "LimitAlgorithm",
    "LimitPermit",
    "MisuseError",
    "Outcome",
    "Permit",
    "Pipeline",
    "Policy",
    "ResilienceError",
    "ResilientTransport",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "RetryExhaustedError",
    "State",
    "SystemClock",
    "TimeWindow",
    "Timeout",
    "VegasLimit",
    "__version__",
    "compose",
    "current_deadline",
    "deadline",
    "events",
    "exponential_open_duration",
    "parse_retry_after",
    "remaining",
]


# Names that need httpx (~70 ms to import), loaded on first use.
_LAZY = {
    "AsyncResilientTransport": "transport",
    "HTTPCircuitOpenError": "transport",
    "HTTPConcurrencyLimitExceededError": "transport",
    "HTTPDeadlineExceededError": "transport",
    "ResilientTransport": "transport",
}


def __getattr__(name: str) -> Any:
    # PEP 562: computed on first use, so `import resilience` stays cheap.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name == "__version__":
        from importlib.metadata import version

        return version("resilience")
    raise AttributeError(f"module 'resilience' has no attribute {name!r}")
