"""What a breaker asks of a shared-state backend (e.g. `resilience.redis`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._outcome import Outcome
    from ._breaker import CircuitBreaker

__all__ = ["SharedState"]


class SharedState(Protocol):
    """A backend that lets breakers of the same name in many processes act as one.

    The breaker calls it only around a half-open probe; everything else
    (outcomes, transitions) the backend reads from the breaker's counters and
    events, off the call path, and applies back with `apply_remote`. A
    backend may also define `async def agrant_probe(breaker)` (async callers
    then await it instead of calling `grant_probe`) and
    `state_changed(breaker, event)` (told of every transition, after the
    breaker's lock is released).
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
