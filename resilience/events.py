"""Typed event records, and the hub that hands them to observers.

Policies publish an event when something worth knowing happens (a state
change, a rejection, a scheduled retry); never per successful call. Observers
are plain callables taking one event. They run synchronously in the thread
that caused the event, so they must be quick; an observer that raises is
logged (logger `resilience.events`) and counted, and never breaks the call.

```python
import resilience

def on_event(event: resilience.events.Event) -> None:
    if isinstance(event, resilience.events.StateChanged):
        print(event.name, event.from_state, "->", event.to_state)

unsubscribe = resilience.events.subscribe(on_event)   # every policy
breaker.events.subscribe(on_event)                    # one policy
```
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeAlias

if TYPE_CHECKING:
    from ._state import State

__all__ = [
    "BreakerEvicted",
    "BulkheadRejected",
    "CallRejected",
    "DeadlineExceeded",
    "Event",
    "HedgeBudgetExhausted",
    "HedgeSent",
    "HedgeWon",
    "LimitChanged",
    "LimitRejected",
    "Observer",
    "ObserverHub",
    "RetryBudgetExhausted",
    "RetryGaveUp",
    "RetryScheduled",
    "StateChanged",
    "ThresholdCrossed",
    "global_hub",
    "subscribe",
]


class Event:
    """Something a policy did; an immutable record with keyword-only fields.

    `kind` is the event's stable dotted name (for logs and metrics). Events
    compare equal when their type and fields are equal.
    """

    __slots__ = ("name", "time")
    kind: ClassVar[str] = "event"
    _fields: ClassVar[tuple[str, ...]] = ("name", "time")

    #: The name of the policy that published the event.
    name: str
    #: When it happened, on the policy's monotonic clock.
    time: float

    if TYPE_CHECKING:

        def __init__(self, *, name: str, time: float) -> None: ...

    else:

        def __init__(self, **fields: object) -> None:
            if fields.keys() != set(self._fields):
                missing = sorted(set(self._fields) - fields.keys())
                unknown = sorted(fields.keys() - set(self._fields))
                raise TypeError(
                    f"{type(self).__name__}() missing fields {missing}, unknown fields {unknown}"
                )
            for field, value in fields.items():
                object.__setattr__(self, field, value)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields = (*cls._fields, *cls.__dict__.get("__slots__", ()))

    def __setattr__(self, field: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, field: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, field) for field in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), dict(zip(self._fields, self._values(), strict=True))))


def _rebuild(cls: type[Event], fields: dict[str, object]) -> Event:
    return cls(**fields)  # type: ignore[arg-type]


class StateChanged(Event):
    """A circuit breaker moved from one state to another."""

    __slots__ = ("from_state", "reason", "to_state")
    kind: ClassVar[str] = "breaker.state_changed"
    from_state: State
    to_state: State
    #: Why: e.g. "failure_rate", "consecutive_failures", "probes_succeeded", "manual".
    reason: str

    if TYPE_CHECKING:

        def __init__(
            self, *, name: str, time: float, from_state: State, to_state: State, reason: str
        ) -> None: ...


class CallRejected(Event):
    """A circuit breaker rejected a call without running it."""

    __slots__ = ("retry_after", "state")
    kind: ClassVar[str] = "call.rejected"
    state: State
    #: Seconds until a probe is allowed, or None when forced open.
    retry_after: float | None

    if TYPE_CHECKING:

        def __init__(
            self, *, name: str, time: float, state: State, retry_after: float | None
        ) -> None: ...


class ThresholdCrossed(Event):
    """A breaker's failure rate, slow-call rate or failure streak reached its threshold.

    Published just before the breaker opens, and in METRICS_ONLY state (which
    never opens) once each time the value climbs back to the threshold.
    """

    __slots__ = ("metric", "threshold", "value")
    kind: ClassVar[str] = "breaker.threshold_crossed"
    #: "failure_rate", "slow_call_rate" or "consecutive_failures".
    metric: str
    value: float
    threshold: float

    if TYPE_CHECKING:

        def __init__(
            self, *, name: str, time: float, metric: str, value: float, threshold: float
        ) -> None: ...


class BreakerEvicted(Event):
    """A bounded breaker registry dropped its least recently used breaker."""

    __slots__ = ("state",)
    kind: ClassVar[str] = "registry.evicted"
    #: The evicted breaker's state; anything but closed means a lost open circuit.
    state: State

    if TYPE_CHECKING:

        def __init__(self, *, name: str, time: float, state: State) -> None: ...


class RetryScheduled(Event):
    """A call failed and will be tried again after `delay` seconds."""

    __slots__ = ("attempt", "delay", "error_type", "status")
    kind: ClassVar[str] = "retry.scheduled"
    #: The number of the attempt that just failed (1 is the first call).
    attempt: int
    delay: float
    #: The failed attempt's exception type name, or None for a failing result.
    error_type: str | None
    #: The HTTP status that triggered the retry: a failing result's int `status_code`
    #: (a response), or that of an exception's `.response`; None otherwise (and by default).
    status: int | None

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            name: str,
            time: float,
            attempt: int,
            delay: float,
            error_type: str | None,
            status: int | None = None,
        ) -> None: ...

    else:

        def __init__(self, **fields: object) -> None:
            fields.setdefault("status", None)  # added later: optional, for older callers
            super().__init__(**fields)


class RetryGaveUp(Event):
    """A retry policy stopped retrying and let the last failure through."""

    __slots__ = ("attempts", "elapsed", "error_type", "reason")
    kind: ClassVar[str] = "retry.gave_up"
    attempts: int
    #: Seconds from the first attempt's start to the give-up.
    elapsed: float
    error_type: str | None
    #: Why: "attempts", "deadline", "budget", "retry_after", "not_retryable".
    reason: str

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            name: str,
            time: float,
            attempts: int,
            elapsed: float,
            error_type: str | None,
            reason: str,
        ) -> None: ...


class RetryBudgetExhausted(Event):
    """A retry was not made because the downstream's retry budget was spent."""

    __slots__ = ()
    kind: ClassVar[str] = "retry.budget_exhausted"


class HedgeSent(Event):
    """A hedged call sent one more attempt: its delay passed, or an attempt failed non-fatally."""

    __slots__ = ("attempt", "elapsed", "reason")
    kind: ClassVar[str] = "hedge.sent"
    #: The number of the attempt sent (2 is the first hedge).
    attempt: int
    #: Seconds since the call started.
    elapsed: float
    #: Why: "delay" (no answer in time) or "failure" (a non-fatal failure).
    reason: str

    if TYPE_CHECKING:

        def __init__(
            self, *, name: str, time: float, attempt: int, elapsed: float, reason: str
        ) -> None: ...


class HedgeWon(Event):
    """A hedge, not the first attempt, gave the answer of a hedged call."""

    __slots__ = ("attempt", "elapsed")
    kind: ClassVar[str] = "hedge.won"
    #: The number of the attempt that won (2 is the first hedge).
    attempt: int
    #: Seconds from the call's start to its answer.
    elapsed: float

    if TYPE_CHECKING:

        def __init__(self, *, name: str, time: float, attempt: int, elapsed: float) -> None: ...


class HedgeBudgetExhausted(Event):
    """A hedge was not sent because its budget was spent."""

    __slots__ = ()
    kind: ClassVar[str] = "hedge.budget_exhausted"


class DeadlineExceeded(Event):
    """A call ran out of time."""

    __slots__ = ("budget",)
    kind: ClassVar[str] = "deadline.exceeded"
    #: The time that was allowed, in seconds, if known.
    budget: float | None

    if TYPE_CHECKING:

        def __init__(self, *, name: str, time: float, budget: float | None) -> None: ...


class BulkheadRejected(Event):
    """A bulkhead rejected a call: no slot was free in time."""

    __slots__ = ("max_concurrent", "waited")
    kind: ClassVar[str] = "bulkhead.rejected"
    max_concurrent: int
    waited: float

    if TYPE_CHECKING:

        def __init__(
            self, *, name: str, time: float, max_concurrent: int, waited: float
        ) -> None: ...


class LimitRejected(Event):
    """A concurrency limit rejected a call: no slot was free in time."""

    __slots__ = ("limit", "waited")
    kind: ClassVar[str] = "limit.rejected"
    #: The limit in force at the rejection.
    limit: int
    waited: float

    if TYPE_CHECKING:

        def __init__(self, *, name: str, time: float, limit: int, waited: float) -> None: ...


class LimitChanged(Event):
    """An adaptive concurrency limit moved (published on every change of the whole limit)."""

    __slots__ = ("from_limit", "in_flight", "to_limit")
    kind: ClassVar[str] = "limit.changed"
    from_limit: int
    to_limit: int
    #: Calls in flight when the limit moved (may exceed a lowered limit).
    in_flight: int

    if TYPE_CHECKING:

        def __init__(
            self, *, name: str, time: float, from_limit: int, to_limit: int, in_flight: int
        ) -> None: ...


Observer: TypeAlias = Callable[[Event], object]


class ObserverHub:
    """A set of observers that receive every event published here.

    A hub may have a parent: events go to this hub's observers, then to the
    parent's. Each policy owns a hub whose parent is `global_hub`, so an
    observer subscribed globally sees every policy. Subscribing and
    publishing are thread-safe; publishing takes no lock.
    """

    __slots__ = ("_observers", "errors", "parent")
    # Subscriptions are rare: one lock for every hub keeps each policy's hub small.
    _lock: ClassVar[threading.Lock] = threading.Lock()
    #: Observers subscribed on any hub; zero lets a hot path skip `active`.
    observed: ClassVar[int] = 0

    def __init__(self, parent: ObserverHub | None = None) -> None:
        if parent is not None and not isinstance(parent, ObserverHub):
            raise TypeError(f"parent= must be an ObserverHub or None, got {parent!r}")
        self.parent = parent
        self._observers: tuple[Observer, ...] = ()
        #: How many times an observer of this hub raised.
        self.errors = 0

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add `observer`; return a function that removes it again (idempotent)."""
        if not callable(observer):
            raise TypeError(f"observer must be callable(event), got {observer!r}")
        with self._lock:
            self._observers = (*self._observers, observer)
            ObserverHub.observed += 1

        def unsubscribe() -> None:
            self.unsubscribe(observer)

        return unsubscribe

    def unsubscribe(self, observer: Observer) -> None:
        """Remove one subscription of `observer`; unknown observers are ignored."""
        with self._lock:
            observers = list(self._observers)
            if observer in observers:
                observers.remove(observer)
                self._observers = tuple(observers)
                ObserverHub.observed -= 1

    @property
    def active(self) -> bool:
        """Whether anyone listens here or upstream (lets a policy skip building events)."""
        return bool(self._observers) or (self.parent is not None and self.parent.active)

    def publish(self, event: Event) -> None:
        """Hand `event` to every observer here, then to the parent hub's."""
        hub: ObserverHub | None = self
        while hub is not None:
            for observer in hub._observers:
                try:
                    observer(event)
                except Exception as error:  # noqa: BLE001  (an observer must never break a call)
                    hub._report(observer, event, error)
            hub = hub.parent

    def _report(self, observer: Observer, event: Event, error: Exception) -> None:
        import logging

        with self._lock:
            self.errors += 1
        logging.getLogger("resilience.events").error(
            "observer %r failed on event %s from %r",
            observer,
            event.kind,
            event.name,
            exc_info=error,
        )

    def __repr__(self) -> str:
        return f"<ObserverHub observers={len(self._observers)} errors={self.errors}>"


#: The hub every policy's own hub forwards to.
global_hub = ObserverHub()


def subscribe(observer: Observer) -> Callable[[], None]:
    """Observe the events of every policy; return the function that unsubscribes."""
    return global_hub.subscribe(observer)
