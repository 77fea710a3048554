from __future__ import annotations

import datetime
import math
import subprocess
import sys
from typing import Any

import pytest
from structlog.testing import capture_logs

import resilience
from resilience.events import BulkheadRejected, LimitChanged, LimitRejected, ObserverHub
from resilience.logging import StructlogObserver, install
from resilience.testing import FakeClock


def test_breaker_lifecycle_is_logged_with_names_states_and_reasons() -> None:
    """Open (warning), one call.rejected per open period, half-open and closed with the count."""
    clock = FakeClock()
    breaker = resilience.CircuitBreaker(
        "log-payments",
        consecutive_failures=1,
        failure_rate_threshold=None,
        open_duration=5,
        clock=clock,
    )
    breaker.events.subscribe(StructlogObserver())
    with capture_logs() as logs:
        breaker.acquire().record_failure()
        for _ in range(3):
            with pytest.raises(resilience.CircuitOpenError):
                breaker.acquire()
        clock.advance(5)
        breaker.acquire().record_success()
    assert [(log["event"], log["log_level"]) for log in logs] == [
        ("breaker.threshold_crossed", "info"),
        ("breaker.opened", "warning"),
        ("call.rejected", "info"),
        ("breaker.half_opened", "info"),
        ("breaker.closed", "info"),
    ]
    opened = logs[1]
    assert opened["name"] == "log-payments"
    assert opened["reason"] == "consecutive_failures"
    assert logs[3]["rejected"] == 3  # the count of calls turned away while open


def test_retries_are_logged_without_arguments() -> None:
    """retry.scheduled and retry.gave_up carry numbers and type names, never arguments."""
    retry = resilience.Retry(on=ValueError, attempts=2, wait=0, name="log-retry")
    retry.events.subscribe(StructlogObserver())

    def fail(secret: str) -> None:
        raise ValueError(f"bad {secret}")

    with capture_logs() as logs, pytest.raises(ValueError, match="bad"):
        retry.call(fail, "password123")
    assert [log["event"] for log in logs] == ["retry.scheduled", "retry.gave_up"]
    assert logs[0]["attempt"] == 1
    assert logs[0]["error_type"] == "ValueError"
    assert logs[1]["reason"] == "attempts"
    assert "password123" not in repr(logs)


def test_noisy_events_are_throttled_with_a_suppressed_count() -> None:
    """At most one line per throttle period per name; the next line says how many were dropped."""
    observer = StructlogObserver(throttle=3600)
    hub = ObserverHub()
    hub.subscribe(observer)
    event = BulkheadRejected(name="db", time=0.0, max_concurrent=4, waited=0.0)
    with capture_logs() as logs:
        for _ in range(50):
            hub.publish(event)
    assert len(logs) == 1
    assert logs[0]["suppressed"] == 0
    observer.throttle = 0.0
    with capture_logs() as logs:
        hub.publish(event)
    assert logs[0]["suppressed"] == 49


def test_install_observes_every_policy_and_can_be_undone() -> None:
    """install() subscribes globally; the returned function unsubscribes."""
    uninstall = install()
    try:
        with capture_logs() as logs:
            resilience.CircuitBreaker("log-global").force_open()
    finally:
        uninstall()
    assert [log["event"] for log in logs] == ["breaker.forced_open"]
    with capture_logs() as logs:
        resilience.CircuitBreaker("log-after").force_open()
    assert logs == []


def test_bad_throttle() -> None:
    """throttle= is validated."""
    with pytest.raises(ValueError, match="throttle="):
        StructlogObserver(throttle=-1)


def test_nothing_is_logged_unless_installed() -> None:
    """Without install(), unconfigured structlog stays silent: nothing is printed."""
    code = (
        "import resilience\n"
        "b = resilience.CircuitBreaker('quiet', consecutive_failures=1)\n"
        "b.acquire().record_failure()\n"
        "b.force_open()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == ""
    assert result.stderr == ""


def test_installing_twice_logs_each_event_once() -> None:
    """install() is idempotent: a second call adds no second observer."""
    first, second = install(), install()
    try:
        with capture_logs() as logs:
            resilience.CircuitBreaker("log-twice").force_open()
    finally:
        second()
        first()
    assert [log["event"] for log in logs] == ["breaker.forced_open"]


def test_each_uninstall_undoes_its_own_install() -> None:
    """Logging goes on until every install() is undone; calling an uninstall twice is harmless."""
    first, second = install(), install()
    second()
    second()  # harmless: it cannot undo the first install
    with capture_logs() as logs:
        resilience.CircuitBreaker("log-first").force_open()
    assert [log["event"] for log in logs] == ["breaker.forced_open"]
    first()
    with capture_logs() as logs:
        resilience.CircuitBreaker("log-none").force_open()
    assert logs == []


def test_a_later_install_with_other_arguments_takes_over_until_undone() -> None:
    """install(logger=B) after install(logger=A): B gets the lines; once undone, A again."""
    a, b = RecordingLogger(), RecordingLogger()

    def publish(name: str) -> None:
        event = BulkheadRejected(name=name, time=0.0, max_concurrent=1, waited=0.0)
        resilience.events.global_hub.publish(event)

    undo_a = install(a)
    try:
        publish("db-1")
        undo_b = install(b, throttle=0)
        publish("db-2")
        publish("db-2")  # throttle=0 now: both logged
        undo_b()
        publish("db-3")
        publish("db-3")  # A's throttle (10 s) again: suppressed
    finally:
        undo_a()
    publish("db-4")
    assert b.names == ["db-2", "db-2"]
    assert a.names == ["db-1", "db-3"]


class RecordingLogger:
    def __init__(self) -> None:
        self.names: list[object] = []

    def info(self, event: str, **fields: object) -> None:
        self.names.append(fields.get("name"))

    warning = info


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"throttle": -1}, ValueError, "throttle="),
        ({"throttle": math.nan}, ValueError, "throttle="),
        ({"throttle": math.inf}, ValueError, "throttle="),
        ({"throttle": True}, TypeError, "throttle="),
        ({"throttle": "10"}, TypeError, "throttle="),
        ({"throttle": None}, TypeError, "throttle="),
        ({"logger": 3}, TypeError, "logger="),
        ({"logger": "resilience"}, TypeError, "logger="),
        ({"limit_factor": 1}, ValueError, "limit_factor="),
        ({"limit_factor": 0.5}, ValueError, "limit_factor="),
        ({"limit_factor": math.inf}, ValueError, "limit_factor="),
        ({"limit_factor": math.nan}, ValueError, "limit_factor="),
        ({"limit_factor": True}, TypeError, "limit_factor="),
        ({"limit_factor": "2"}, TypeError, "limit_factor="),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """StructlogObserver and install() validate their arguments, naming the parameter."""
    with pytest.raises(error, match=match):
        StructlogObserver(**kwargs)
    with pytest.raises(error, match=match):
        install(**kwargs)


def test_throttle_takes_a_timedelta() -> None:
    """throttle= is seconds, or a datetime.timedelta."""
    assert StructlogObserver(throttle=datetime.timedelta(minutes=1)).throttle == 60.0


def _moved(name: str, old: int, new: int) -> LimitChanged:
    return LimitChanged(name=name, time=0.0, from_limit=old, to_limit=new, in_flight=3)


def test_a_limit_is_logged_when_it_moves_by_the_factor() -> None:
    """limit.changed only once the limit is 1.5x (default) above or below the last logged value."""
    hub = ObserverHub()
    hub.subscribe(StructlogObserver(throttle=0))
    with capture_logs() as logs:
        for old, new in [(20, 21), (21, 25), (25, 29), (29, 30), (30, 24), (24, 19), (19, 5)]:
            hub.publish(_moved("lim", old, new))
    # base 20: 21, 25, 29 are < 30; 30 = 1.5 x 20 is logged (info), base 30;
    # 24 > 30 / 1.5 = 20 is not; 19 < 20 is (warning), base 19; 5 <= 19 / 1.5 is too.
    lines = [(log["event"], log["log_level"], log["from_limit"], log["to_limit"]) for log in logs]
    assert lines == [
        ("limit.changed", "info", 20, 30),
        ("limit.changed", "warning", 30, 19),
        ("limit.changed", "warning", 19, 5),
    ]
    assert logs[0]["in_flight"] == 3
    assert logs[0]["name"] == "lim"


def test_limit_lines_are_throttled() -> None:
    """Large moves within `throttle` seconds of the last line are counted, not logged."""
    hub = ObserverHub()
    hub.subscribe(StructlogObserver(throttle=3600, limit_factor=2))
    with capture_logs() as logs:
        hub.publish(_moved("lim", 10, 40))
        hub.publish(_moved("lim", 40, 5))
        hub.publish(LimitRejected(name="lim", time=0.0, limit=5, waited=0.0))
        hub.publish(LimitRejected(name="lim", time=0.0, limit=5, waited=0.0))
    assert [(log["event"], log["suppressed"]) for log in logs] == [
        ("limit.changed", 0),
        ("limit.rejected", 0),
    ]
    assert logs[1]["limit"] == 5


def test_a_real_limit_logs_through_install() -> None:
    """A ConcurrencyLimit's events reach structlog once install() is called."""
    clock = FakeClock()
    limit = resilience.ConcurrencyLimit(
        resilience.AIMDLimit(initial_limit=20, window=None), name="log-limit", clock=clock
    )
    uninstall = install(throttle=0)
    try:
        with capture_logs() as logs:
            for _ in range(4):  # drops: int(L * 0.9): 20 -> 18 -> 16 -> 14 -> 12 <= 20 / 1.5
                permit = limit.acquire()
                clock.advance(0.1)
                permit.record_drop()
    finally:
        uninstall()
    assert [(log["event"], log["from_limit"], log["to_limit"]) for log in logs] == [
        ("limit.changed", 20, 12)
    ]


def test_a_hedge_budget_refusal_is_a_throttled_warning() -> None:
    """`hedge.budget_exhausted` is logged as a warning, throttled like retry.budget_exhausted.

    docs/guide/observability.md: sent and won hedges are metrics and events, not lines.
    """
    from resilience.events import HedgeBudgetExhausted, HedgeSent, HedgeWon

    observer = StructlogObserver(throttle=3600)
    hub = ObserverHub()
    hub.subscribe(observer)
    with capture_logs() as logs:
        for _ in range(5):
            hub.publish(HedgeBudgetExhausted(name="quotes", time=0.0))
        hub.publish(HedgeSent(name="quotes", time=0.0, attempt=2, elapsed=0.01, reason="delay"))
        hub.publish(HedgeWon(name="quotes", time=0.0, attempt=2, elapsed=0.02))
    assert [(log["event"], log["log_level"], log["name"]) for log in logs] == [
        ("hedge.budget_exhausted", "warning", "quotes")
    ]
