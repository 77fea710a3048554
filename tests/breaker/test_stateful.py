"""The breaker against a small reference model, driven by hypothesis.

The model is the specification written as plainly as possible: lists instead
of rings, no locks, no fast paths. Any sequence of admissions, outcomes,
cancellations, time steps and operator actions must leave the breaker and the
model in the same state with the same counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resilience import CircuitBreaker, CircuitOpenError, CountWindow, Permit, State, TimeWindow
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


@dataclass
class Model:
    state: State = State.CLOSED
    epoch: int = 0
    outcomes: list[bool] = field(default_factory=list)  # failed?, this closed period
    open_until: float = 0.0
    openings: int = 0
    half_open_since: float = 0.0
    in_flight: int = 0
    probe_results: list[bool] = field(default_factory=list)
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
        self.in_flight = 0
        self.probe_results = []
        if state in (State.CLOSED, State.METRICS_ONLY):
            self.outcomes = []
            self.stamps = []
        if state is State.CLOSED:
            self.openings = 0
        if state is State.HALF_OPEN:
            self.half_open_since = now

    def open(self, now: float) -> None:
        self.openings += 1
        self.open_until = now + OPEN_FOR * self.openings
        self.enter(State.OPEN, now)

    def advance(self, now: float) -> None:
        if self.state is State.OPEN and now >= self.open_until:
            self.enter(State.HALF_OPEN, now)
        elif (
            self.state is State.HALF_OPEN
            and self.in_flight > 0
            and now - self.half_open_since >= PROBE_WAIT
        ):
            self.open(now)

    def acquire(self, now: float) -> ModelPermit | None:
        self.advance(now)
        if self.state in (State.CLOSED, State.METRICS_ONLY, State.DISABLED):
            return ModelPermit(self.epoch, probe=False)
        if self.state is State.HALF_OPEN and self.in_flight + len(self.probe_results) < PROBES:
            if self.in_flight == 0:
                self.half_open_since = now  # the wait runs from the oldest probe still out
            self.in_flight += 1
            return ModelPermit(self.epoch, probe=True)
        self.counts["rejected"] += 1
        return None

    def trips(self, now: float) -> bool:
        streak = 0
        for failed in reversed(self.outcomes):
            if not failed:
                break
            streak += 1
        window = self.window(now)
        rate_trips = len(window) >= MINIMUM and sum(window) / len(window) >= RATE
        return streak >= STREAK or rate_trips

    def settle(self, permit: ModelPermit, outcome: str, now: float) -> None:
        self.counts[outcome] += 1
        if permit.epoch != self.epoch or (outcome == "ignored" and not permit.probe):
            return
        if self.state in (State.CLOSED, State.METRICS_ONLY):
            self.outcomes.append(outcome == "failure")
            self.stamps.append(math.floor(now / (WINDOW_SECONDS / BUCKETS)))
            if self.state is State.CLOSED and self.trips(now):
                self.open(now)
        elif self.state is State.HALF_OPEN:
            self.in_flight -= 1
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
        if self.model.state in (State.CLOSED, State.METRICS_ONLY):
            window = self.model.window(self.clock.monotonic())
            assert metrics.window_calls == len(window)
            assert metrics.window_failures == sum(window)


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
