"""The states a circuit breaker can be in."""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """A circuit breaker's state; the value is the Prometheus label value.

    `CLOSED`, `OPEN` and `HALF_OPEN` are driven by outcomes. `FORCED_OPEN`,
    `DISABLED` and `METRICS_ONLY` are set by an operator and kept until reset.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"

    def __str__(self) -> str:
        return self.value
