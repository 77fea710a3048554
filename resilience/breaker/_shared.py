"""What a breaker asks of a shared-state backend (e.g. `resilience.redis`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._outcome import Outcome
    from ._breaker import CircuitBreaker

__all__ = ["SharedState"]


class SharedState(Protocol):
    """A backend that lets breakers of the same name in many processes act as one.

    The breaker calls it around a half-open probe, and (if the backend has
    it) `state_changed(breaker, event)` after every transition, outside the
    breaker's lock; outcomes the backend reads off the call path from
    `breaker.window_totals()`, and the fleet's decisions it applies back with
    `apply_remote`. A backend may also define `async def
    agrant_probe(breaker)`: async callers then await it instead of calling
    `grant_probe`.
    """

    def grant_probe(self, breaker: CircuitBreaker) -> object:
        """Answer a request for a half-open probe.

        False: the fleet has enough probes (the breaker rejects, and asks no
        more in this epoch until `probe_slots_free()`); None or True: decide
        locally; any other object: a fleet probe slot, handed back to
        `probe_settled` when the probe settles.
        """
        ...

    def probe_settled(
        self, breaker: CircuitBreaker, grant: object, outcome: Outcome, slow: bool
    ) -> None:
        """A fleet probe settled (IGNORED: its slot is returned unused). Must not block."""
        ...
