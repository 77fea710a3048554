"""The breaker against a small reference model, driven by hypothesis.

The model is the specification written as plainly as possible: lists instead
of rings, no locks, no fast paths. Any sequence of admissions, outcomes,
cancellations, time steps and operator actions must leave the breaker and the
model in the same state with the same counts, the same figures in `metrics()`
(the window in CLOSED and METRICS_ONLY, the window as it was at the trip in
OPEN, the probes in HALF_OPEN) and the same `ThresholdCrossed` events. Calls
that finish after the state they were admitted in has ended (stale outcomes,
through the permit and the lock-free decorator path) never move a figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resilience import CircuitBreaker, CircuitOpenError, CountWindow, Permit, State, TimeWindow
from resilience.events import ThresholdCrossed
from resilience.testing import FakeClock

WINDOW = 5
MINIMUM = 3
RATE = 0.5
STREAK = 3
OPEN_FOR = 10.0
PROBES = 2
PROBE_WAIT = 25.0
WINDOW_SECONDS = 10.0  # the time-window variant: 5 buckets of 2 s
BUCKETS = 5


@dataclass
class ModelPermit:
    epoch: int
    probe: bool
    start: float = 0.0


@dataclass
class Model:
    state: State = State.CLOSED
    epoch: int = 0
    outcomes: list[bool] = field(default_factory=list)  # failed?, this closed period
    open_until: float = 0.0
    openings: int = 0
    probe_starts: list[float] = field(default_factory=list)  # the probes still out
    probe_results: list[bool] = field(default_factory=list)
    above: set[str] = field(default_factory=set)  # thresholds crossed, not yet dipped below
    crossings: list[str] = field(default_factory=list)  # every ThresholdCrossed, in order
    counts: dict[str, int] = field(
        default_factory=lambda: {"success": 0, "failure": 0, "ignored": 0, "rejected": 0}
    )
    timed: bool = False  # a time window instead of the last WINDOW outcomes
    stamps: list[int] = field(default_factory=list)  # the bucket of each outcome (timed)

    def window(self, now: float) -> list[bool]:
        """The outcomes in the window at `now`: the last WINDOW, or the last BUCKETS buckets."""
        if not self.timed:
            return self.outcomes[-WINDOW:]
        current = math.floor(now / (WINDOW_SECONDS / BUCKETS))
        return [
            failed
            for failed, bucket in zip(self.outcomes, self.stamps, strict=True)
            if bucket > current - BUCKETS
        ]

    def enter(self, state: State, now: float) -> None:
        self.state = state
        self.epoch += 1
        self.probe_starts = []
        self.probe_results = []
        if state in (State.CLOSED, State.METRICS_ONLY):
            self.outcomes = []
            self.stamps = []
            self.above = set()
        if state is State.CLOSED:
            self.openings = 0

    def open(self, now: float) -> None:
        self.openings += 1
        self.open_until = now + OPEN_FOR * self.openings
        self.enter(State.OPEN, now)

    def advance(self, now: float) -> None:
        if self.state is State.OPEN and now >= self.open_until:
            self.enter(State.HALF_OPEN, now)
        elif (
            self.state is State.HALF_OPEN
            and self.probe_starts
            and now - min(self.probe_starts) >= PROBE_WAIT  # the oldest probe still out
        ):
            self.open(now)

    def acquire(self, now: float) -> ModelPermit | None:
        self.advance(now)
        if self.state in (State.CLOSED, State.METRICS_ONLY, State.DISABLED):
            return ModelPermit(self.epoch, probe=False)
        if (
            self.state is State.HALF_OPEN
            and len(self.probe_starts) + len(self.probe_results) < PROBES
        ):
            self.probe_starts.append(now)
            return ModelPermit(self.epoch, probe=True, start=now)
        self.counts["rejected"] += 1
        return None

    def streak(self) -> int:
        """Failures in a row at the end of the recorded outcomes."""
        streak = 0
        for failed in reversed(self.outcomes):
            if not failed:
                break
            streak += 1
        return streak

    def crossed(self, now: float) -> set[str]:
        """The thresholds the recorded outcomes are at or above; new ones are published."""
        window = self.window(now)
        crossed = set()
        if self.streak() >= STREAK:
            crossed.add("consecutive_failures")
        if len(window) >= MINIMUM and sum(window) / len(window) >= RATE:
            crossed.add("failure_rate")
        for metric in sorted(
            crossed - self.above, key=["consecutive_failures", "failure_rate"].index
        ):
            self.crossings.append(metric)
        self.above = crossed
        return crossed

    def figures(self, now: float) -> tuple[int, int, int]:
        """(window calls, window failures, consecutive failures), as metrics() shows them."""
        if self.state is State.HALF_OPEN:
            streak = 0
            for failed in reversed(self.probe_results):
                if not failed:
                    break
                streak += 1
            return len(self.probe_results), sum(self.probe_results), streak
        window = self.window(now)
        return len(window), sum(window), self.streak()

    def settle(self, permit: ModelPermit, outcome: str, now: float) -> None:
        self.counts[outcome] += 1
        if permit.epoch != self.epoch or (outcome == "ignored" and not permit.probe):
            return
        if self.state in (State.CLOSED, State.METRICS_ONLY):
            self.outcomes.append(outcome == "failure")
            self.stamps.append(math.floor(now / (WINDOW_SECONDS / BUCKETS)))
            if self.crossed(now) and self.state is State.CLOSED:
                self.open(now)
        elif self.state is State.HALF_OPEN:
            self.probe_starts.remove(permit.start)
            if outcome != "ignored":
                self.probe_results.append(outcome == "failure")
                if len(self.probe_results) == PROBES:
                    if sum(self.probe_results) / PROBES >= RATE:
                        self.open(now)
                    else:
                        self.enter(State.CLOSED, now)

    def force(self, state: State, now: float) -> None:
        if self.state is not state or state is State.CLOSED:
            self.enter(state, now)


def _interrupt() -> None:
    raise KeyboardInterrupt


class BreakerMachine(RuleBasedStateMachine):
    timed = False

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        window = TimeWindow(WINDOW_SECONDS, buckets=BUCKETS) if self.timed else CountWindow(WINDOW)
        self.breaker = CircuitBreaker(
            "model",
            failure_rate_threshold=RATE,
            minimum_calls=MINIMUM,
            window=window,
            consecutive_failures=STREAK,
            open_duration=lambda openings: OPEN_FOR * openings,
            half_open_max_calls=PROBES,
            half_open_max_wait=PROBE_WAIT,
            clock=self.clock,
        )
        self.model = Model(timed=self.timed)
        self.permits: list[tuple[Permit, ModelPermit]] = []
        self.guarded_ok = self.breaker(lambda: "ok")
        self.guarded_interrupt = self.breaker(_interrupt)
        self.crossings: list[str] = []
        self.breaker.events.subscribe(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, ThresholdCrossed):
            self.crossings.append(event.metric)

    @rule()
    def acquire(self) -> None:
        expected = self.model.acquire(self.clock.monotonic())
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as error:
            rejected_in = error.state
            assert expected is None
            assert rejected_in is self.model.state
        else:
            assert expected is not None
            assert permit.probe == expected.probe
            self.permits.append((permit, expected))

    @precondition(lambda self: self.permits)
    @rule(index=st.integers(0, 100), outcome=st.sampled_from(["success", "failure", "ignored"]))
    def settle(self, index: int, outcome: str) -> None:
        permit, expected = self.permits.pop(index % len(self.permits))
        {"success": permit.record_success, "failure": permit.record_failure}.get(
            outcome, permit.release
        )()
        self.model.settle(expected, outcome, self.clock.monotonic())

    @rule(outcome=st.sampled_from(["success", "failure"]), count=st.integers(1, 4))
    def burst(self, outcome: str, count: int) -> None:
        """Several calls admitted and settled at once (makes windows fill and age quickly)."""
        for _ in range(count):
            held = len(self.permits)
            self.acquire()
            if len(self.permits) > held:  # admitted: settle this new permit now
                self.settle(held, outcome)

    @rule()
    def decorated_success(self) -> None:
        """The lock-free fast path, admitted and settled in one go."""
        now = self.clock.monotonic()
        expected = self.model.acquire(now)
        try:
            assert self.guarded_ok() == "ok"
        except CircuitOpenError:
            assert expected is None
        else:
            assert expected is not None
            self.model.settle(expected, "success", now)

    @rule(failures=st.integers(0, 4), decorated=st.booleans())
    def late_success(self, failures: int, decorated: bool) -> None:
        """A success admitted before `failures` other calls fail (and may trip the breaker).

        Its outcome is stale when the state it was admitted in has ended.
        """
        now = self.clock.monotonic()
        expected = self.model.acquire(now)

        def body() -> str:
            self.burst("failure", failures) if failures else None
            return "ok"

        if decorated:
            try:
                assert self.breaker(body)() == "ok"
            except CircuitOpenError:
                assert expected is None
                return
        else:
            try:
                permit = self.breaker.acquire()
            except CircuitOpenError:
                assert expected is None
                return
            body()
            permit.record_success()
        assert expected is not None
        self.model.settle(expected, "success", self.clock.monotonic())

    @rule()
    def interrupted_call(self) -> None:
        """A decorated call cancelled by a BaseException: admitted, then IGNORED."""
        expected = self.model.acquire(self.clock.monotonic())
        try:
            self.guarded_interrupt()
        except CircuitOpenError:
            assert expected is None
        except KeyboardInterrupt:
            assert expected is not None
            self.model.settle(expected, "ignored", self.clock.monotonic())
        else:
            raise AssertionError("the guarded call returned")

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["force_open", "reset", "disable", "metrics_only"]))
    def operator(self, action: str) -> None:
        getattr(self.breaker, action)()
        target = {
            "force_open": State.FORCED_OPEN,
            "reset": State.CLOSED,
            "disable": State.DISABLED,
            "metrics_only": State.METRICS_ONLY,
        }[action]
        self.model.force(target, self.clock.monotonic())

    @invariant()
    def same_state_and_counts(self) -> None:
        self.model.advance(self.clock.monotonic())
        assert self.breaker.state is self.model.state
        metrics = self.breaker.metrics()
        assert metrics.calls == self.model.counts
        if self.model.state not in (State.FORCED_OPEN, State.DISABLED):
            calls, failures, streak = self.model.figures(self.clock.monotonic())
            assert metrics.window_calls == calls
            assert metrics.window_failures == failures
            assert metrics.consecutive_failures == streak
        assert self.crossings == self.model.crossings


class TimeWindowBreakerMachine(BreakerMachine):
    """The same rules on a time window: outcomes age out, and a success may then trip."""

    timed = True


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TimeWindowBreakerMachine.TestCase.settings = BreakerMachine.TestCase.settings
test_breaker_matches_the_model = BreakerMachine.TestCase
test_time_window_breaker_matches_the_model = TimeWindowBreakerMachine.TestCase


def test_model_sanity() -> None:
    """The model itself opens after a streak (guards against a vacuous model)."""
    model = Model()
    for _ in range(STREAK):
        permit = model.acquire(0.0)
        assert permit is not None
        model.settle(permit, "failure", 0.0)
    assert model.state is State.OPEN
