"""Breakers by name: get-or-create with shared defaults, bounded, iterable for metrics."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .._state import State
from .._validate import check_int
from ..events import BreakerEvicted, ObserverHub, global_hub
from ._breaker import CircuitBreaker

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["BreakerRegistry"]


class BreakerRegistry:
    """Circuit breakers by name (one per downstream, per host...), at most `max_size`.

    `get(name)` returns the breaker of that name, creating it from the shared
    defaults on first use. When a new breaker would exceed `max_size`, the
    least recently used *closed* breaker is dropped; only if every breaker is
    open, half-open or forced is the least recently used one dropped anyway.
    Every eviction publishes a `BreakerEvicted` event (with the breaker's
    state) on `registry.events`, so an open circuit is never lost silently.

    Args:
        max_size: The most breakers kept at once.
        **defaults: Keyword arguments of `CircuitBreaker` shared by every
            breaker created here; checked now, by building one.
    """

    def __init__(self, *, max_size: int = 1000, **defaults: Any) -> None:
        self.max_size = check_int(max_size, "max_size")
        if "name" in defaults:
            raise TypeError("name= is given to get(name), not to the registry's defaults")
        CircuitBreaker("registry-defaults", **defaults)  # fail now on bad defaults
        self.defaults = dict(defaults)
        #: Registry events (evictions); forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._overrides: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, **overrides: Any) -> CircuitBreaker:
        """Return the breaker called `name`, creating it on first use.

        `overrides` replace defaults for a breaker created by this call. Asking
        for an existing breaker with different overrides is a `ValueError`:
        its settings cannot change after creation.
        """
        self._lock.acquire()
        try:
            breaker = self._breakers.get(name)
            if breaker is not None:
                self._breakers.move_to_end(name)
                if overrides and overrides != self._overrides.get(name, {}):
                    raise ValueError(
                        f"breaker {name!r} already exists with other settings; "
                        f"settings apply only when a breaker is created"
                    )
                return breaker
        finally:
            self._lock.release()
        return self._create(name, overrides)

    def _create(self, name: str, overrides: dict[str, Any]) -> CircuitBreaker:
        created = CircuitBreaker(name, **{**self.defaults, **overrides})
        evicted: list[CircuitBreaker] = []
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is not None:  # another thread created it first
                self._breakers.move_to_end(name)
                return breaker
            self._breakers[name] = created
            self._overrides[name] = overrides
            while len(self._breakers) > self.max_size:
                evicted.append(self._evict_one(keep=name))
        for old in evicted:
            self.events.publish(
                BreakerEvicted(name=old.name, time=old.clock.monotonic(), state=old._mode[0])
            )
        return created

    def _evict_one(self, keep: str) -> CircuitBreaker:
        """Drop the least recently used closed breaker, or else the least recently used.

        `keep` (the breaker being added) is never the victim.
        """
        victim = ""
        for name, breaker in self._breakers.items():  # least recently used first
            if name == keep:
                continue
            victim = victim or name
            if breaker._mode[0] is State.CLOSED:
                victim = name
                break
        self._overrides.pop(victim, None)
        return self._breakers.pop(victim)

    def remove(self, name: str) -> CircuitBreaker | None:
        """Forget the breaker called `name` and return it (None if unknown)."""
        with self._lock:
            self._overrides.pop(name, None)
            return self._breakers.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        """Iterate over a snapshot of the breakers, least recently used first."""
        with self._lock:
            breakers = list(self._breakers.values())
        return iter(breakers)

    def __repr__(self) -> str:
        return f"<BreakerRegistry {len(self)}/{self.max_size} breakers>"
