"""What a breaker asks of a shared-state backend (e.g. `resilience.redis`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["SharedState"]


class SharedState(Protocol):
    """A backend that lets breakers of the same name in many processes act as one.

    The breaker calls it only when it is about to admit a half-open probe;
    everything else (outcomes, transitions) the backend reads from the
    breaker's counters and events, off the call path. A backend may also
    define `async def agrant_probe(breaker) -> bool | None`; async callers
    then await it instead of calling `grant_probe`.
    """

    def grant_probe(self, breaker: CircuitBreaker) -> bool | None:
        """True: probe; False: the fleet has enough probes; None: unknown, decide locally."""
        ...
