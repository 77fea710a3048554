from __future__ import annotations

import logging
import pickle
import threading

import pytest

from resilience import State, events
from resilience.events import (
    BulkheadRejected,
    CallRejected,
    DeadlineExceeded,
    Event,
    HedgeBudgetExhausted,
    HedgeSent,
    HedgeWon,
    ObserverHub,
    RetryBudgetExhausted,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
)

SAMPLES: list[Event] = [
    StateChanged(
        name="p", time=1.0, from_state=State.CLOSED, to_state=State.OPEN, reason="failure_rate"
    ),
    CallRejected(name="p", time=2.0, state=State.OPEN, retry_after=28.0),
    RetryScheduled(name="r", time=3.0, attempt=1, delay=0.2, error_type="ConnectError"),
    RetryGaveUp(name="r", time=4.0, attempts=3, elapsed=1.5, error_type=None, reason="attempts"),
    RetryBudgetExhausted(name="b", time=5.0),
    DeadlineExceeded(name="d", time=6.0, budget=2.0),
    BulkheadRejected(name="k", time=7.0, max_concurrent=10, waited=0.0),
    HedgeSent(name="h", time=8.0, attempt=2, elapsed=0.05, reason="delay"),
    HedgeWon(name="h", time=9.0, attempt=2, elapsed=0.06),
    HedgeBudgetExhausted(name="h", time=10.0),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_events_are_immutable_comparable_and_picklable(event: Event) -> None:
    """Records are values: frozen, equal by fields, hashable, and they pickle."""
    with pytest.raises(AttributeError, match="immutable"):
        event.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del event.name  # type: ignore[misc]
    clone = pickle.loads(pickle.dumps(event))
    assert clone == event
    assert hash(clone) == hash(event)
    assert repr(clone) == repr(event)
    assert repr(event).startswith(f"{type(event).__name__}(name=")


def test_event_kinds_are_stable_dotted_names() -> None:
    """Each event type has its own dotted kind, used by logs and metrics."""
    kinds = [event.kind for event in SAMPLES]
    assert kinds == [
        "breaker.state_changed",
        "call.rejected",
        "retry.scheduled",
        "retry.gave_up",
        "retry.budget_exhausted",
        "deadline.exceeded",
        "bulkhead.rejected",
        "hedge.sent",
        "hedge.won",
        "hedge.budget_exhausted",
    ]


def test_events_of_different_types_are_not_equal() -> None:
    """Equality needs the same type, not just the same shared fields."""
    assert Event(name="x", time=1.0) != RetryBudgetExhausted(name="x", time=1.0)
    assert Event(name="x", time=1.0) == Event(name="x", time=1.0)


def test_missing_or_unknown_fields_are_a_type_error() -> None:
    """Constructing an event with the wrong fields fails loudly."""
    with pytest.raises(TypeError, match=r"missing fields \['time'\]"):
        Event(name="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"unknown fields \['colour'\]"):
        Event(name="x", time=0.0, colour="red")  # type: ignore[call-arg]


def test_hub_delivers_to_its_observers_then_the_parent() -> None:
    """A policy hub forwards to its parent, so global observers see every policy."""
    parent = ObserverHub()
    child = ObserverHub(parent=parent)
    seen: list[tuple[str, Event]] = []
    parent.subscribe(lambda event: seen.append(("parent", event)))
    child.subscribe(lambda event: seen.append(("child", event)))
    child.publish(SAMPLES[0])
    parent.publish(SAMPLES[1])
    assert seen == [("child", SAMPLES[0]), ("parent", SAMPLES[0]), ("parent", SAMPLES[1])]


def test_unsubscribe_is_idempotent() -> None:
    """The function returned by subscribe removes the observer, once."""
    hub = ObserverHub()
    seen: list[Event] = []
    observed = ObserverHub.observed
    unsubscribe = hub.subscribe(seen.append)
    assert hub.active
    assert ObserverHub.observed == observed + 1
    unsubscribe()
    unsubscribe()
    assert ObserverHub.observed == observed
    hub.unsubscribe(print)
    hub.publish(SAMPLES[0])
    assert seen == []
    assert not hub.active


def test_active_looks_upstream() -> None:
    """A hub is active if anyone listens here or in a parent."""
    parent = ObserverHub()
    child = ObserverHub(parent=parent)
    assert not child.active
    stop = parent.subscribe(lambda event: None)
    assert child.active
    stop()
    assert not child.active


def test_a_failing_observer_never_breaks_the_publisher(caplog: pytest.LogCaptureFixture) -> None:
    """An observer that raises is logged and counted; the others still run."""
    hub = ObserverHub()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    hub.subscribe(broken)
    hub.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="resilience.events"):
        hub.publish(SAMPLES[0])
        hub.publish(SAMPLES[1])
    assert seen == SAMPLES[:2]
    assert hub.errors == 2
    assert "observer bug" in caplog.text
    assert "breaker.state_changed" in caplog.text


def test_global_subscribe_sees_policy_hubs() -> None:
    """resilience.events.subscribe observes the global hub that policy hubs forward to."""
    seen: list[Event] = []
    unsubscribe = events.subscribe(seen.append)
    try:
        ObserverHub(parent=events.global_hub).publish(SAMPLES[2])
    finally:
        unsubscribe()
    assert seen == [SAMPLES[2]]


def test_bad_arguments() -> None:
    """Non-callable observers and non-hub parents are rejected at once."""
    with pytest.raises(TypeError, match="observer"):
        ObserverHub().subscribe("print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parent="):
        ObserverHub(parent=object())  # type: ignore[arg-type]


def test_subscribing_while_publishing_from_threads_loses_nothing() -> None:
    """Publishing takes no lock, yet concurrent (un)subscribes never drop an event."""
    hub = ObserverHub()
    counts = [0]
    lock = threading.Lock()

    def count(event: Event) -> None:
        with lock:
            counts[0] += 1

    hub.subscribe(count)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            unsubscribe = hub.subscribe(lambda event: None)
            unsubscribe()

    def publish() -> None:
        for _ in range(2000):
            hub.publish(SAMPLES[4])

    churner = threading.Thread(target=churn)
    publishers = [threading.Thread(target=publish) for _ in range(4)]
    churner.start()
    for thread in publishers:
        thread.start()
    for thread in publishers:
        thread.join(timeout=30)
    stop.set()
    churner.join(timeout=30)
    assert counts[0] == 4 * 2000
