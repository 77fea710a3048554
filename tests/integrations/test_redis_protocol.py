"""The fleet protocol of docs/guide/redis.md, checked step by step.

A deterministic simulation: simulated processes (each a `RedisSharedState`
with its own connection, pub/sub subscription and breaker) share a fake clock
and one real redis-server. Nothing runs in the background: hypothesis draws
the schedule (calls and their outcomes, probes held or settled, flushes,
pub/sub messages delivered, delayed or dropped, Redis restarted, processes
crashing mid-probe or joining late, time passing), and the invariants I1-I6
of the guide are checked after every step.

`make test` runs a bounded number of examples; `make fleet-sim` runs many
more (FLEET_SIM_EXAMPLES, see docs/development.md).
"""

from __future__ import annotations

import collections
import contextlib
import os
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import resilience
from resilience import CircuitBreaker, CircuitOpenError, State
from resilience.events import StateChanged
from resilience.testing import FakeClock

from .redis_server import RedisServer

redis_lib = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

import resilience.redis as rr  # noqa: E402

FLUSH = 0.05  # the simulated flush interval
OPEN = 1.0  # open_duration
THRESHOLD = 3  # consecutive_failures
EXAMPLES = int(os.environ.get("FLEET_SIM_EXAMPLES", "100"))
STEPS = int(os.environ.get("FLEET_SIM_STEPS", "40"))

#: What the schedules exercised, over all examples (printed, and checked below).
seen: collections.Counter[str] = collections.Counter()


def event(what: str) -> None:
    seen[what] += 1


class Member:
    """One simulated process: its shared state, its breaker, its subscription."""

    def __init__(self, server: RedisServer, prefix: str, clock: FakeClock, conf: dict[str, Any]):
        self.client = redis_lib.Redis(
            host="127.0.0.1",
            port=server.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        self.shared = rr.RedisSharedState(
            client=self.client, prefix=prefix, flush_interval=FLUSH, clock=clock
        )
        self.breaker = self.shared.attach(CircuitBreaker("sim", clock=clock, **conf))
        self.clock = clock
        self.held: list[tuple[resilience.Permit, float]] = []  # probes out, with grant time
        self.streak = 0  # this process's failures in a row (in its windows)
        self.longest_streak = 0
        self.reasons: list[str] = []
        self.breaker.events.subscribe(self._on_event)
        self.pubsub: Any = None
        self.subscribe()

    def _on_event(self, event: object) -> None:
        if isinstance(event, StateChanged):
            self.reasons.append(event.reason)
            if event.to_state is State.CLOSED:
                self.streak = 0

    def subscribe(self) -> None:
        try:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.shared.channel)
            pubsub.get_message(timeout=0.01)  # the subscription confirmation
        except redis_lib.RedisError:
            self.pubsub = None
            return
        self.pubsub = pubsub
        self.shared._subscribed()

    def flush(self) -> bool:
        """One flush, and at once another while reports wait (the loop is woken for them)."""
        for _ in range(3):
            try:
                self.shared._cycle()
            except redis_lib.RedisError as error:
                self.shared._fault("flush", error)
                return False
            if not (self.shared._reports or self.shared._settles):
                break
        return True

    def deliver(self, drop: bool) -> None:
        """Read what the channel holds for this process; apply it, or lose it."""
        if self.pubsub is None:
            self.subscribe()
            return
        try:
            while (message := self.pubsub.get_message(timeout=0.001)) is not None:
                if not drop:
                    self.shared._apply(message)
                else:
                    event("a message was lost")
        except redis_lib.RedisError:
            self.pubsub = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.pubsub is not None:
                self.pubsub.close()
        self.client.close()


def fleet_status(member: Member) -> list[Any] | None:
    """The fleet state as Redis holds it (a FLUSH with no outcomes), or None if unreachable."""
    shared = member.shared
    fleet = shared._fleets["sim"]
    try:
        return rr._decode(shared._flush_script(**shared._request(fleet, 0, 0, "", -1)))
    except redis_lib.RedisError:
        return None


def fleet_slots(member: Member) -> int:
    return int(member.client.zcard(member.shared._key("sim", "slots")))


class FleetProtocol(RuleBasedStateMachine):
    """N processes, one fleet breaker; invariants after every step."""

    server: RedisServer

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=1000.0)
        self.prefix = f"sim-{uuid.uuid4().hex[:8]}"
        self.members: list[Member] = []
        self.crashed: list[Member] = []
        self.redis_up = True
        self.failures_drawn = False
        self.rejections = 0
        self.conf: dict[str, Any] = {}

    @initialize(
        probes=st.integers(1, 2),
        max_wait=st.sampled_from([None, 2.0]),
        members=st.integers(2, 4),
    )
    def start(self, probes: int, max_wait: float | None, members: int) -> None:
        self.conf = {
            "consecutive_failures": THRESHOLD,
            "failure_rate_threshold": 0.5,
            "minimum_calls": 6,
            "open_duration": OPEN,
            "half_open_max_calls": probes,
            "half_open_max_wait": max_wait,
        }
        for _ in range(members):
            self.join_fleet()

    def join_fleet(self) -> Member:
        member = Member(self.server, self.prefix, self.clock, self.conf)
        self.members.append(member)
        return member

    # -- steps ---------------------------------------------------------------------

    @rule(
        index=st.integers(0, 9),
        outcomes=st.lists(
            st.sampled_from(["success", "failure", "failure", "ignored"]), min_size=1, max_size=6
        ),
        hold=st.booleans(),
    )
    def calls(self, index: int, outcomes: list[str], hold: bool) -> None:
        """A burst of calls in one process; a probe among them may be held (left running)."""
        member = self.members[index % len(self.members)]
        for outcome in outcomes:
            if outcome == "failure":
                self.failures_drawn = True
            try:
                permit = member.breaker.acquire()
            except CircuitOpenError:
                self.rejections += 1
                continue
            if getattr(permit, "grant", None) is not None:
                event("a fleet probe was granted")
            if permit.probe and hold:
                member.held.append((permit, self.clock.monotonic()))
                continue
            self.settle(member, permit, outcome)

    @rule(index=st.integers(0, 9))
    def downstream_dies(self, index: int) -> None:
        """One process calls a dead downstream until its breaker stops it (at most THRESHOLD)."""
        self.calls(index, ["failure"] * THRESHOLD, hold=False)

    @rule()
    def open_period_passes(self) -> None:
        self.clock.advance(OPEN + FLUSH)

    def settle(self, member: Member, permit: resilience.Permit, outcome: str) -> None:
        recording = member.breaker.state in (State.CLOSED, State.METRICS_ONLY)
        current = permit.epoch == member.breaker.epoch
        if outcome == "success":
            permit.record_success()
        elif outcome == "failure":
            permit.record_failure()
        else:
            permit.release()
        if recording and current and not permit.probe:
            if outcome == "failure":
                member.streak += 1
                member.longest_streak = max(member.longest_streak, member.streak)
            elif outcome == "success":
                member.streak = 0

    @rule(index=st.integers(0, 9), outcome=st.sampled_from(["success", "failure", "ignored"]))
    def settle_held(self, index: int, outcome: str) -> None:
        member = self.members[index % len(self.members)]
        if member.held:
            if outcome == "failure":
                self.failures_drawn = True
            permit, _ = member.held.pop(0)
            self.settle(member, permit, outcome)

    @rule(index=st.integers(0, 9))
    def flush(self, index: int) -> None:
        self.members[index % len(self.members)].flush()

    @rule(index=st.integers(0, 9), drop=st.booleans())
    def deliver(self, index: int, drop: bool) -> None:
        self.members[index % len(self.members)].deliver(drop)

    @rule(seconds=st.sampled_from([0.01, FLUSH, 0.3, OPEN, 2.5]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.members) > 1)
    @rule(index=st.integers(0, 9))
    def crash(self, index: int) -> None:
        """A process dies, probes and all: it never settles or flushes again."""
        member = self.members.pop(index % len(self.members))
        self.crashed.append(member)
        if member.held:
            event("a process crashed mid-probe")

    @precondition(lambda self: len(self.members) < 5)
    @rule()
    def late_joiner(self) -> None:
        """I5: a process attaching to an open fleet rejects calls within one flush."""
        member = self.join_fleet()
        if not self.redis_up:
            return
        status = fleet_status(member)
        assert member.flush()
        if status is not None and status[3] == "open":
            event("a process joined an open fleet")
            assert member.breaker.state is State.OPEN, (status, member.breaker)
            with pytest.raises(CircuitOpenError):
                member.breaker.acquire()
            self.rejections += 1

    @precondition(lambda self: self.redis_up)
    @rule(restart=st.booleans())
    def redis_fault(self, restart: bool) -> None:
        """Redis dies (kill -9); `restart` brings it back on the same port at once."""
        event("redis killed")
        self.server.kill()
        self.redis_up = False
        if restart:
            self.redis_returns()

    @precondition(lambda self: not self.redis_up)
    @rule()
    def redis_returns(self) -> None:
        self.server.start()
        self.redis_up = True
        for member in self.members:
            member.subscribe()

    @precondition(lambda self: self.redis_up)
    @rule()
    def converge(self) -> None:
        """I4: with Redis up, two flush rounds (no message delivered) and every process agrees."""
        for _ in range(2):
            for member in self.members:
                assert member.flush()
        status = fleet_status(self.members[0])
        assert status is not None
        phase, free = status[3], status[6]
        event(f"converged: fleet {phase}, epoch {min(status[2], 5)}+")
        for member in self.members:
            state = member.breaker.state
            expected = {
                "closed": {State.CLOSED},
                "open": {State.OPEN},
                "half_open": {State.HALF_OPEN},
            }[phase]
            assert state in expected, (phase, status, member.breaker, member.reasons)
        if phase == "half_open" and free > 0:
            # I2 (no stall): a fleet with a free slot admits the next probe at once.
            member = next((m for m in self.members if not m.held), None)
            if member is not None:
                permit = member.breaker.acquire()
                assert permit.probe
                event("a free slot admitted the next probe")
                member.held.append((permit, self.clock.monotonic()))

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def i1_at_most_n_probes_per_fleet_epoch(self) -> None:
        """I1: probes out (granted, unsettled, lease not over) per fleet epoch <= N."""
        if not self.members:
            return
        lease = self.members[0].shared._fleets["sim"].args[4] / 1000
        now = self.clock.monotonic()
        out: dict[tuple[str, int], int] = {}
        for member in self.members + self.crashed:
            for permit, granted_at in member.held:
                grant = getattr(permit, "grant", None)
                if grant is not None and now < granted_at + lease:
                    key = (grant.incarnation, grant.epoch)
                    out[key] = out.get(key, 0) + 1
        limit = self.conf.get("half_open_max_calls", 1)
        assert all(count <= limit for count in out.values()), out
        if self.redis_up:
            assert fleet_slots(self.members[0]) <= limit

    @invariant()
    def i3_no_streak_no_consecutive_trip(self) -> None:
        """I3: no process saw THRESHOLD failures in a row: no consecutive-failure trip."""
        if all(m.longest_streak < THRESHOLD for m in self.members + self.crashed):
            for member in self.members + self.crashed:
                assert "consecutive_failures" not in member.reasons, member.reasons
            if self.redis_up and self.members:
                reason = self.members[0].client.hget(
                    self.members[0].shared._key("sim", "state"), "reason"
                )
                assert reason != b"consecutive_failures"

    @invariant()
    def i6_healthy_downstream_never_rejected(self) -> None:
        """I6: while every outcome is a success, Redis faults never cause a rejection."""
        if not self.failures_drawn:
            assert self.rejections == 0

    def teardown(self) -> None:
        for member in self.members + self.crashed:
            for reason in set(member.reasons):
                event(f"transition: {reason}")
        for member in self.members + self.crashed:
            member.close()
        if not self.redis_up:
            self.server.start()


@pytest.mark.slow
def test_fleet_protocol_simulation(shared_redis_server: RedisServer) -> None:
    FleetProtocol.server = shared_redis_server
    run = FleetProtocol.TestCase
    run.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("FLEET_SIM_EXAMPLES") is None,
    )
    seen.clear()
    run().runTest()
    print("\nfleet simulation:", dict(sorted(seen.items())))
    # A simulation that never reached these would check nothing worth checking.
    for needed in (
        "redis killed",
        "a message was lost",
        "a fleet probe was granted",
        "a free slot admitted the next probe",
        "a process joined an open fleet",
        "a process crashed mid-probe",
        "transition: probes_failed",
        "transition: probes_succeeded",
        "transition: consecutive_failures",
        "transition: fleet",
    ):
        assert seen[needed] > 0, (needed, dict(seen))
