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
from hypothesis import HealthCheck, given, settings
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

from .redis_server import RedisServer, free_port

redis_lib = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

import resilience.redis as rr  # noqa: E402

FLUSH = 0.05  # the simulated flush interval
OPEN = 1.0  # open_duration
THRESHOLD = 3  # consecutive_failures
EXAMPLES = int(os.environ.get("FLEET_SIM_EXAMPLES", "150"))
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
            client=self.client, prefix=prefix, flush_interval=FLUSH, clock=clock, socket_timeout=0.5
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


# -- each invariant and each defect of the old protocol, on a fake clock -------------------


class Fleet:
    """Members sharing one FakeClock and a fresh key prefix on a real server."""

    def __init__(self, server: RedisServer, count: int, **conf: Any) -> None:
        self.server = server
        self.clock = FakeClock(start=1000.0)
        self.prefix = f"t-{uuid.uuid4().hex[:8]}"
        defaults: dict[str, Any] = {
            "consecutive_failures": 2,
            "failure_rate_threshold": None,
            "open_duration": OPEN,
            "half_open_max_calls": 1,
        }
        self.conf = defaults | conf
        self.members = [self.join() for _ in range(count)]

    def join(self) -> Member:
        return Member(self.server, self.prefix, self.clock, self.conf)

    def flush_all(self) -> None:
        for member in self.members:
            assert member.flush()

    def trip(self, member: Member) -> None:
        """`member` fails until it opens; every member then learns it by a flush."""
        with contextlib.suppress(CircuitOpenError):
            for _ in range(10):
                member.breaker.acquire().record_failure()
        assert member.breaker.state is State.OPEN
        self.flush_all()

    def states(self) -> list[State]:
        return [member.breaker.state for member in self.members]

    def close(self) -> None:
        for member in self.members:
            member.close()


@pytest.fixture
def fleet_of(shared_redis_server: RedisServer):
    made: list[Fleet] = []

    def make(count: int, **conf: Any) -> Fleet:
        made.append(Fleet(shared_redis_server, count, **conf))
        return made[-1]

    yield make
    for fleet in made:
        fleet.close()


@pytest.mark.parametrize("open_duration", [0.1, 0.5, 2.0, 30.0])
def test_i2_next_probe_after_a_failed_one(fleet_of, open_duration: float) -> None:
    """I2: after a failed probe the next one runs within open_duration + flush + 50 ms.

    The old protocol never handed the failed probe's slot back: no probe ran again.
    """
    fleet = fleet_of(3, open_duration=open_duration)
    a, b, c = fleet.members
    fleet.trip(a)
    assert fleet.states() == [State.OPEN] * 3
    for attempt in range(3):  # a failed probe, again and again: never a stall
        fleet.clock.advance(open_duration)
        probe = b.breaker.acquire()
        assert probe.grant is not None, attempt
        with pytest.raises(CircuitOpenError):
            c.breaker.acquire()  # one probe fleet-wide
        probe.record_failure()
        assert b.flush()  # the flush loop is woken by the settled probe
        failed_at = fleet.clock.monotonic()
        fleet.clock.advance(FLUSH)
        fleet.flush_all()  # within one flush interval every member knows
        assert fleet.states() == [State.OPEN] * 3
        fleet.clock.advance(open_duration - FLUSH + 0.001)
        assert fleet.clock.monotonic() - failed_at <= open_duration + FLUSH + 0.05
        next_probe = c.breaker.acquire()
        assert next_probe.grant is not None
        next_probe.release()  # handed back unused
        assert c.flush()
    fleet.clock.advance(FLUSH)
    probe = a.breaker.acquire()
    probe.record_success()
    assert a.flush()
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED] * 3


@pytest.mark.parametrize("how", ["release", "ignored", "cancelled"])
def test_a_probe_that_settles_without_an_outcome_hands_its_slot_back(fleet_of, how: str) -> None:
    """IGNORED, released or cancelled: the next member probes at once, not after an expiry."""
    import asyncio

    fleet = fleet_of(2, record=(ConnectionError,))
    a, b = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    if how == "release":
        a.breaker.acquire().release()
    elif how == "ignored":

        @a.breaker
        def not_recorded() -> None:
            raise KeyError("outside record=")

        with pytest.raises(KeyError):
            not_recorded()
    else:

        async def cancelled() -> None:
            entered = asyncio.Event()

            @a.breaker
            async def probe() -> None:
                entered.set()
                await asyncio.sleep(3600)

            task = asyncio.create_task(probe())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled())
    assert a.flush()
    assert fleet_slots(a) == 0
    probe = b.breaker.acquire()
    assert probe.grant is not None
    probe.record_success()
    assert b.flush()
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED, State.CLOSED]


def test_half_open_max_calls_means_n_probes_in_the_fleet_and_one_decision(fleet_of) -> None:
    """Two members, two slots: one probe each, and the fleet closes on both outcomes."""
    fleet = fleet_of(2, half_open_max_calls=2)
    a, b = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    first, second = a.breaker.acquire(), b.breaker.acquire()
    assert first.grant is not None
    assert second.grant is not None
    with pytest.raises(CircuitOpenError):
        a.breaker.acquire()  # both fleet slots are out
    first.record_success()
    assert a.flush()
    assert fleet.states() == [State.HALF_OPEN, State.HALF_OPEN]  # one outcome: no decision
    second.record_success()
    assert b.flush()
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED, State.CLOSED]


def test_i3_alternating_traffic_never_trips_on_consecutive_failures(fleet_of) -> None:
    """I3: success, failure, success... in every member, flushed in any batching: no trip."""
    fleet = fleet_of(3, consecutive_failures=2)
    for round_ in range(30):
        for member in fleet.members:
            member.breaker.acquire().record_success()
            member.breaker.acquire().record_failure()
            if round_ % 3 == 0:
                assert member.flush()
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED] * 3


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=30), flush_every=st.integers(1, 7))
def test_the_fleet_streak_is_what_a_single_breaker_counts(
    shared_redis_server: RedisServer, outcomes: list[bool], flush_every: int
) -> None:
    """One member and a plain breaker, fed the same outcomes: they trip at the same call."""
    fleet = Fleet(shared_redis_server, 1, consecutive_failures=3)
    alone = CircuitBreaker("alone", clock=fleet.clock, **fleet.conf)
    (member,) = fleet.members
    try:
        for number, failed in enumerate(outcomes):
            for breaker in (member.breaker, alone):
                with contextlib.suppress(CircuitOpenError):
                    permit = breaker.acquire()
                    permit.record_failure() if failed else permit.record_success()
            if number % flush_every == 0:
                assert member.flush()
            assert member.breaker.state is alone.state, number
    finally:
        fleet.close()


def test_i4_a_trip_during_an_outage_reaches_every_member_after_it(
    fleet_of, shared_redis_server: RedisServer
) -> None:
    """I4: A trips while Redis is down; Redis restarts empty; B and C follow within 2 flushes.

    The old protocol never told B (it admitted 50 of 50 calls while Redis said open).
    """
    fleet = fleet_of(3)
    a, b, _c = fleet.members
    fleet.flush_all()
    shared_redis_server.kill()
    try:
        with contextlib.suppress(CircuitOpenError):
            for _ in range(3):
                a.breaker.acquire().record_failure()
        assert not a.flush()
        assert fleet.states() == [State.OPEN, State.CLOSED, State.CLOSED]
        for _ in range(10):  # I6: a healthy downstream is never rejected because of Redis
            b.breaker.acquire().record_success()
    finally:
        shared_redis_server.start()
    for member in fleet.members:
        member.subscribe()
    for _ in range(2):
        fleet.flush_all()
    assert fleet.states() == [State.OPEN] * 3


def test_i4_a_restart_while_open_keeps_the_fleet_open(
    fleet_of, shared_redis_server: RedisServer
) -> None:
    """Redis restarts empty while the fleet is open: the members re-seed it, nobody closes."""
    fleet = fleet_of(3)
    fleet.trip(fleet.members[0])
    shared_redis_server.kill()
    shared_redis_server.start()
    for _ in range(2):
        fleet.flush_all()
    assert fleet.states() == [State.OPEN] * 3
    status = fleet_status(fleet.members[0])
    assert status is not None
    assert status[3] == "open"


def test_i5_a_late_joiner_rejects_within_one_flush(fleet_of) -> None:
    """I5: a member attaching to an open fleet rejects calls after its first flush."""
    fleet = fleet_of(2)
    fleet.trip(fleet.members[0])
    late = fleet.join()
    fleet.members.append(late)
    assert late.breaker.state is State.CLOSED
    assert late.flush()
    with pytest.raises(CircuitOpenError):
        late.breaker.acquire()


def test_i5_a_resubscribed_member_learns_what_it_missed(fleet_of) -> None:
    """Messages lost while a member resubscribes: its next flush brings the fleet state."""
    fleet = fleet_of(2)
    a, b = fleet.members
    with contextlib.suppress(CircuitOpenError):
        for _ in range(3):
            a.breaker.acquire().record_failure()
    assert a.flush()
    b.deliver(drop=True)  # the transition message is lost
    b.subscribe()
    assert b.breaker.state is State.CLOSED
    assert b.flush()
    assert b.breaker.state is State.OPEN


def test_a_refused_member_asks_redis_no_more_in_that_epoch(fleet_of) -> None:
    """A half-open call that finds no free slot locally costs no Redis command."""
    fleet = fleet_of(2)
    a, b = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    probe = a.breaker.acquire()
    asked = []
    script = b.shared._probe_script
    b.shared._probe_script = lambda **kw: asked.append(1) or script(**kw)
    for _ in range(20):
        with pytest.raises(CircuitOpenError):
            b.breaker.acquire()
    assert len(asked) == 1
    probe.release()
    assert a.flush()
    assert b.flush()  # the flush reports a free slot: b may ask again
    assert b.breaker.acquire().grant is not None
    assert len(asked) == 2


def test_members_with_other_settings_run_locally_and_say_so(
    fleet_of, caplog: pytest.LogCaptureFixture
) -> None:
    """A member whose settings differ from the fleet's: an error logged, local state, no counts."""
    fleet = fleet_of(1)
    fleet.flush_all()
    odd = Member(fleet.server, fleet.prefix, fleet.clock, fleet.conf | {"consecutive_failures": 9})
    fleet.members.append(odd)
    with caplog.at_level("ERROR", logger="resilience.redis"):
        assert odd.flush()
    assert "settings differ" in caplog.text
    assert '"consecutive_failures":9' in caplog.text
    assert odd.shared.metrics()["mismatched"] == 1
    with contextlib.suppress(CircuitOpenError):
        for _ in range(12):
            odd.breaker.acquire().record_failure()
    assert odd.breaker.state is State.OPEN  # its own rule, locally
    assert odd.flush()
    assert fleet.members[0].flush()
    assert fleet.members[0].breaker.state is State.CLOSED  # never told the fleet


def test_same_named_breakers_in_one_process_must_agree(shared_redis_server) -> None:
    shared = rr.RedisSharedState(f"redis://127.0.0.1:{shared_redis_server.port}/0")
    shared.attach(CircuitBreaker("x", consecutive_failures=3))
    with pytest.raises(ValueError, match="other settings"):
        shared.attach(CircuitBreaker("x", consecutive_failures=4))


def test_a_client_that_could_make_a_call_wait_is_refused() -> None:
    """A client that retries, or waits longer than socket_timeout=, could block a probe grant.

    redis-py's `redis.Redis(...)` retries with backoff by default, and waits up to
    5 s for a command and for a connection (also from_url without the options).
    """
    no_retry = Retry(NoBackoff(), 0)
    with pytest.raises(ValueError, match=r"client= retries"):
        rr.RedisSharedState(client=redis_lib.Redis(host="127.0.0.1", port=1, socket_timeout=1))
    with pytest.raises(ValueError, match=r"client= retries"):
        rr.RedisSharedState(client=redis_lib.asyncio.Redis(port=1, socket_timeout=1))
    with pytest.raises(ValueError, match=r"socket_timeout=5"):
        rr.RedisSharedState(client=redis_lib.Redis.from_url("redis://127.0.0.1:1/0"))
    with pytest.raises(ValueError, match=r"socket_connect_timeout=5"):
        rr.RedisSharedState(
            client=redis_lib.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.05)
        )
    slow = redis_lib.Redis(
        host="127.0.0.1", port=1, retry=no_retry, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    with pytest.raises(ValueError, match=r"socket_timeout=0.5 \(None"):
        rr.RedisSharedState(client=slow)
    rr.RedisSharedState(client=slow, socket_timeout=0.5)
    for client in (
        redis_lib.Redis(port=1, retry=no_retry, socket_timeout=0.05, socket_connect_timeout=0.05),
        redis_lib.asyncio.Redis.from_url(
            "redis://127.0.0.1:1/0", socket_timeout=0.05, socket_connect_timeout=0.05
        ),
    ):
        rr.RedisSharedState(client=client)


# -- what an outside attack found (each failed before its fix) -----------------------------


def test_a_local_reopen_is_not_undone_by_the_fleets_half_open_phase(fleet_of) -> None:
    """A probe decided locally fails: the member stays open for its own period.

    Before: the next flush answer ("half-open") made it half-open again at once,
    and every call became a probe of the dead downstream.
    """
    fleet = fleet_of(2, open_duration=30.0)
    a, _ = fleet.members
    fleet.trip(a)
    fleet.clock.advance(30.0)
    a.shared.grant_probe = lambda breaker: None  # the grant is unknown: decided locally
    a.breaker.acquire().record_failure()
    assert a.breaker.state is State.OPEN
    assert a.flush()
    assert a.breaker.state is State.OPEN
    assert a.breaker.retry_after() == pytest.approx(30.0)


def test_a_refused_member_decides_locally_while_redis_is_down(
    fleet_of, shared_redis_server: RedisServer
) -> None:
    """I6: the fleet refused B a probe, then Redis died: B probes locally, not never."""
    fleet = fleet_of(2)
    a, b = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    assert a.breaker.acquire().grant is not None
    with pytest.raises(CircuitOpenError):
        b.breaker.acquire()
    shared_redis_server.kill()
    try:
        assert not b.flush()
        probe = b.breaker.acquire()
        assert probe.probe
        assert getattr(probe, "grant", None) is None
        probe.record_success()
        assert b.breaker.state is State.CLOSED
    finally:
        shared_redis_server.start()


def test_only_a_members_latest_transition_is_reported_after_a_partition(
    fleet_of, shared_redis_server: RedisServer
) -> None:
    """Cut off, A trips and then closes on a local probe: the fleet must not open afterwards.

    Before: the queued "open" was sent (with the 30 s computed at the trip) and
    the "closed" failed its compare-and-set: 20 of 20 healthy calls rejected.
    """
    fleet = fleet_of(2, open_duration=30.0)
    a, _b = fleet.members
    fleet.flush_all()
    shared_redis_server.kill()
    try:
        with contextlib.suppress(CircuitOpenError):
            for _ in range(2):
                a.breaker.acquire().record_failure()
        fleet.clock.advance(30.0)
        a.breaker.acquire().record_success()  # a local probe: the grant fails, decided here
        assert a.breaker.state is State.CLOSED
        assert [report[1] for report in a.shared._reports] == ["closed"]
    finally:
        shared_redis_server.start()
    fleet.flush_all()
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED, State.CLOSED]


def test_a_broken_record_is_a_fault_and_spares_the_other_breakers(fleet_of) -> None:
    """One record edited by hand: its script fails, the others' flush lands, nothing replays."""
    fleet = fleet_of(1)
    (a,) = fleet.members
    other = a.shared.attach(CircuitBreaker("other", clock=fleet.clock, **fleet.conf))
    assert a.flush()
    a.client.hdel(a.shared._key("sim", "state"), "epoch")
    a.client.set(a.shared._key("other", "state"), "not a hash")
    faults = a.shared.metrics()["faults"]
    a.breaker.acquire().record_success()
    other.acquire().record_failure()
    assert a.flush()
    assert a.shared.metrics()["faults"] > faults
    flushes = a.shared.metrics()["flushes"]
    assert a.flush()  # not sent again and again
    assert a.shared.metrics()["flushes"] == flushes + 1
    window = a.client.keys(a.shared._key("other", "window") + ":*")
    assert window == []  # the failed script added nothing...
    assert a.shared._fleets["other"].members[0].flushed_failures == 1  # ...and is not replayed


def test_a_member_with_other_settings_ignores_the_fleets_messages(fleet_of) -> None:
    fleet = fleet_of(1)
    (a,) = fleet.members
    assert a.flush()
    odd = Member(fleet.server, fleet.prefix, fleet.clock, fleet.conf | {"open_duration": 9.0})
    fleet.members.append(odd)
    assert odd.flush()
    fleet.trip(a)
    odd.deliver(drop=False)
    assert odd.breaker.state is State.CLOSED
    assert odd.shared.metrics()["mismatched"] == 1


def test_garbage_and_forged_numbers_on_the_channel_are_ignored(fleet_of) -> None:
    fleet = fleet_of(1)
    (a,) = fleet.members
    assert a.flush()
    for data in (
        b"\xff\x00",
        b'{"name": "sim", "inc": "1-x", "epoch": Infinity, "phase": "open", '
        b'"remaining": 1, "openings": 1}',
        b'{"name": "sim", "inc": 5, "epoch": 1, "phase": "sideways", "remaining": 1,'
        b' "openings": 1}',
    ):
        a.shared._apply({"data": data})
    assert a.breaker.state is State.CLOSED


def test_a_second_same_named_breaker_reports_its_own_open_period(fleet_of) -> None:
    fleet = fleet_of(1, open_duration=30.0)
    (a,) = fleet.members
    second = a.shared.attach(CircuitBreaker("sim", clock=fleet.clock, **fleet.conf))
    assert a.flush()
    with contextlib.suppress(CircuitOpenError):
        for _ in range(2):
            second.acquire().record_failure()
    assert a.flush()
    status = fleet_status(a)
    assert status[3:5] == ["open", 30_000]


def test_stop_makes_probes_local_and_keeps_what_they_report(fleet_of) -> None:
    """A fleet probe running across stop() reports when the backend starts again."""
    fleet = fleet_of(2)
    a, _b = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    probe = a.breaker.acquire()
    assert probe.grant is not None
    a.shared._stop.set()  # what stop() does to a started backend
    a.shared._stopped()
    probe.record_success()
    local = a.breaker.acquire()  # stopped: no grant asked, the probe is decided here
    assert local.probe
    assert getattr(local, "grant", None) is None
    local.release()
    assert [settle[2] for settle in a.shared._settles] == ["s"]  # kept for the restart
    a.shared._stop.clear()  # what start() does
    assert a.flush()
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED, State.CLOSED]


def test_start_and_stop_twice(shared_redis_server) -> None:
    shared = rr.RedisSharedState(
        f"redis://127.0.0.1:{shared_redis_server.port}/0", prefix=uuid.uuid4().hex[:8]
    ).start()
    breaker = shared.attach(CircuitBreaker("svc", consecutive_failures=1, open_duration=0.05))
    assert shared.start() is shared
    assert len(shared._threads) == 2  # start() twice: still one flush and one listen thread
    shared.stop()
    shared.stop()
    assert breaker._shared is shared
    shared.start()
    assert all(thread.is_alive() for thread in shared._threads)
    shared.stop()


def test_a_breaker_belongs_to_one_backend(shared_redis_server) -> None:
    url = f"redis://127.0.0.1:{shared_redis_server.port}/0"
    breaker = rr.RedisSharedState(url).attach(CircuitBreaker("x", consecutive_failures=1))
    with pytest.raises(ValueError, match="another backend"):
        rr.RedisSharedState(url, prefix="elsewhere").attach(breaker)


def test_a_window_too_fine_for_redis_to_sum_is_refused() -> None:
    shared = rr.RedisSharedState("redis://127.0.0.1:1/0", bucket_seconds=0.01)
    with pytest.raises(ValueError, match="raise bucket_seconds"):
        shared.attach(CircuitBreaker("fine", window=resilience.TimeWindow(seconds=60)))


def test_an_unbounded_open_duration_is_capped_for_the_fleet(fleet_of) -> None:
    """open_duration(n) = 10 * 3**n overflows Redis integers by the 32nd opening: capped."""
    fleet = fleet_of(1, open_duration=lambda openings: 10.0 * 3**openings)
    (a,) = fleet.members
    assert a.flush()
    assert a.shared.metrics()["faults"] == 0


def test_one_flush_is_one_round_trip(fleet_of) -> None:
    """The scripts are loaded once; a flush sends EVALSHA only (no SCRIPT EXISTS each time)."""
    fleet = fleet_of(1)
    (a,) = fleet.members
    assert a.flush()

    def stats() -> dict[str, int]:
        info = a.client.info("commandstats")
        return {name: value["calls"] for name, value in info.items()}

    before = stats()
    for _ in range(5):
        a.breaker.acquire().record_success()
        assert a.flush()
    after = stats()
    assert after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0) == 5
    assert after.get("cmdstat_script|exists", 0) == before.get("cmdstat_script|exists", 0)


def test_a_failure_is_flushed_within_a_tick_and_successes_wait_for_a_batch(fleet_of) -> None:
    """The flush loop flushes early for one failure, for successes only at batch_size."""
    fleet = fleet_of(1)
    (a,) = fleet.members
    assert a.flush()
    later = float("inf")  # the next periodic flush is not due
    for _ in range(a.shared.batch_size - 1):
        a.breaker.acquire().record_success()
    assert not a.shared._due(0.0, later)
    a.breaker.acquire().record_failure()
    assert a.shared._due(0.0, later)
    assert a.shared._pause(0.0) <= a.shared.flush_interval / 5 + 0.001


def test_sharing_subscribes_no_observer(shared_redis_server) -> None:
    """Transitions reach the backend directly: rejections build no events (as unshared)."""
    shared = rr.RedisSharedState(f"redis://127.0.0.1:{shared_redis_server.port}/0")
    breaker = shared.attach(CircuitBreaker("quiet", consecutive_failures=1))
    assert not breaker.events._observers
    breaker.acquire().record_failure()
    assert [report[1] for report in shared._reports] == ["open"]  # still reported


# -- what a second attack found -------------------------------------------------------------


def send_and_lose_the_reply(member: Member) -> None:
    """Redis runs the flush, the reply never arrives (a slow link, a timeout)."""
    shared = member.shared
    commands = shared._plan()
    with member.client.pipeline(transaction=False) as pipeline:
        shared._pipeline(pipeline, commands)
        pipeline.execute(raise_on_error=False)


def test_a_flush_sent_again_after_a_lost_reply_counts_once(fleet_of) -> None:
    """Before: each retry re-added everything since the last acknowledged flush (66x)."""
    fleet = fleet_of(1, consecutive_failures=None, failure_rate_threshold=0.5, minimum_calls=50)
    (a,) = fleet.members
    assert a.flush()
    for _ in range(3):
        a.breaker.acquire().record_failure()
    for _ in range(3):
        send_and_lose_the_reply(a)
    a.breaker.acquire().record_success()
    assert a.flush()  # the lost batch, acknowledged now
    assert a.flush()  # the success, in a batch of its own
    buckets = a.client.keys(a.shared._key("sim", "window") + ":*")
    totals = {"s": 0, "f": 0}
    for key in buckets:
        for field, value in a.client.hgetall(key).items():
            totals[field.decode()] += int(value)
    assert totals == {"s": 1, "f": 3}


def test_a_report_sent_again_after_a_lost_reply_is_applied_once(fleet_of) -> None:
    """Before: a replayed "open" reopened a fleet that had recovered meanwhile."""
    fleet = fleet_of(2)
    a, b = fleet.members
    fleet.flush_all()
    with contextlib.suppress(CircuitOpenError):
        for _ in range(2):
            a.breaker.acquire().record_failure()
    send_and_lose_the_reply(a)  # the fleet opens; a does not know its report landed
    assert b.flush()
    fleet.clock.advance(OPEN)
    probe = b.breaker.acquire()
    probe.record_success()
    assert b.flush()  # the fleet closes
    assert a.flush()  # a's report goes again: already applied, nothing reopens
    fleet.flush_all()
    assert fleet.states() == [State.CLOSED, State.CLOSED]


@pytest.mark.parametrize(
    "error",
    [
        redis_lib.exceptions.ResponseError("BUSY Redis is busy running a script"),
        redis_lib.exceptions.ReadOnlyError("READONLY You can't write against a read only replica"),
        redis_lib.exceptions.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    ],
)
def test_a_passing_error_keeps_what_was_sent_for_the_next_flush(fleet_of, error) -> None:
    """BUSY, READONLY, LOADING: probe outcomes, reports and counts are sent again, not dropped."""
    fleet = fleet_of(2)
    a, _ = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    a.breaker.acquire().record_failure()  # a fleet probe fails
    commands = a.shared._plan()
    a.shared._done(commands, [error] * len(commands))
    assert [settle[2] for settle in a.shared._settles] == ["f"]
    assert a.flush()
    assert a.shared._settles == collections.deque()
    status = fleet_status(a)
    assert status[3] == "open"  # the failed probe reopened the fleet
    assert status[5] == 2


def test_a_broken_record_error_is_dropped_not_replayed() -> None:
    for message in ("WRONGTYPE Operation against a key", "ERR user_script:12: bad", "script: x"):
        assert rr._fails_again(redis_lib.exceptions.ResponseError(message))
    assert not rr._fails_again(redis_lib.exceptions.ResponseError("BUSY busy"))
    # Raised inside a script, a passing error carries "script: ..." too (found by an attack).
    for passing in (
        redis_lib.exceptions.ReadOnlyError(
            "You can't write against a read only replica. script: bd5b, on @user_script:26."
        ),
        redis_lib.exceptions.ResponseError(
            "OOM command not allowed. script: bd5b, on @user_script:9."
        ),
    ):
        assert not rr._fails_again(passing)


def test_a_trip_sent_while_redis_is_a_read_only_replica_is_sent_again(fleet_of) -> None:
    """A failover demotes Redis: the scripts fail with READONLY; the trip and counts wait."""
    fleet = fleet_of(1, consecutive_failures=3)
    (a,) = fleet.members
    assert a.flush()
    for _ in range(3):
        a.breaker.acquire().record_failure()
    a.client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        assert a.flush()
        assert [report[1] for report in a.shared._reports] == ["open"]
        assert a.shared._fleets["sim"].pending is not None
    finally:
        a.client.execute_command("REPLICAOF", "NO", "ONE")
    assert a.flush()
    status = fleet_status(a)
    assert status[3] == "open"
    window = a.client.keys(a.shared._key("sim", "window") + ":*")
    assert sum(int(a.client.hget(key, "f") or 0) for key in window) == 3


def test_a_late_message_does_not_hold_a_member_open_past_the_fleet(fleet_of) -> None:
    """A member hears of an opening late: the next flush answer brings the fleet's end.

    Before: it stayed open for the message's whole stale remainder (30 s by default).
    """
    fleet = fleet_of(2, open_duration=2.0)
    a, b = fleet.members
    fleet.flush_all()
    with contextlib.suppress(CircuitOpenError):
        for _ in range(2):
            a.breaker.acquire().record_failure()
    assert a.flush()
    fleet.clock.advance(2.0)  # the fleet is half-open; b never heard of the opening...
    b.deliver(drop=False)  # ...until now: the message says "2 s left"
    assert b.breaker.state is State.OPEN
    assert b.flush()
    assert b.breaker.state is State.HALF_OPEN


def test_two_same_named_breakers_keep_their_own_reports(fleet_of) -> None:
    fleet = fleet_of(1)
    (a,) = fleet.members
    other = a.shared.attach(CircuitBreaker("sim", clock=fleet.clock, **fleet.conf))
    with contextlib.suppress(CircuitOpenError):
        for _ in range(2):
            other.acquire().record_failure()
    a.breaker.force_open()
    a.breaker.reset()
    assert [(report[1], report[2] is other) for report in a.shared._reports] == [("open", True)]


def test_a_grant_a_thread_gave_up_on_is_handed_back() -> None:
    """The loop answers after the thread stopped waiting: the slot goes back, once."""
    handoff = rr._Handoff("slot-1")
    assert handoff.abandon()
    assert not handoff.deliver()  # the coroutine then returns the slot itself
    late = rr._Handoff("slot-2")
    assert late.deliver()
    assert not late.abandon()  # delivered first: the thread takes the answer


def test_a_closed_report_made_stale_by_a_newer_fleet_state_is_not_sent(fleet_of) -> None:
    """A local close, then the fleet's newer reopen applied before the report left: dropped.

    Otherwise the report would carry the newer epoch and close the reopened fleet.
    """
    fleet = fleet_of(2)
    a, _ = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    a.shared.grant_probe = lambda breaker: None  # decided locally
    a.breaker.acquire().record_success()
    assert [report[1] for report in a.shared._reports] == ["closed"]
    a.breaker.apply_remote(State.OPEN, OPEN)  # the fleet's newer state arrives first
    assert a.flush()
    assert a.shared._reports == collections.deque()
    status = fleet_status(a)
    assert status[3] != "closed"


# -- the guide's remaining promises ----------------------------------------------------------


def test_a_probe_lease_is_ten_open_periods_between_1_and_60_s() -> None:
    shared = rr.RedisSharedState("redis://127.0.0.1:1/0")
    leases = {}
    for open_duration in (0.05, 2.0, 30.0):
        breaker = CircuitBreaker(f"lease{open_duration}", open_duration=open_duration)
        leases[open_duration] = shared._fleet_args(breaker)[1][4]  # ARGV[6]: lease ms
    assert leases == {0.05: 1_000, 2.0: 20_000, 30.0: 60_000}
    waits = CircuitBreaker("waits", half_open_max_wait=3.0)
    assert shared._fleet_args(waits)[1][4] == 3_000  # half_open_max_wait is the lease


def test_every_key_the_fleet_writes_expires(fleet_of) -> None:
    fleet = fleet_of(2)
    a, _ = fleet.members
    fleet.trip(a)
    fleet.clock.advance(OPEN)
    probe = a.breaker.acquire()  # a slot in the zset
    assert probe.grant is not None
    keys = a.client.keys(f"{fleet.prefix}:*")
    assert {key.decode().rsplit(":", 2)[-1] for key in keys} >= {"state", "slots"}
    assert any(":window:" in key.decode() for key in keys)
    assert all(a.client.pttl(key) > 0 for key in keys)


def test_the_background_work_retries_every_flush_interval() -> None:
    """With nothing listening, the flush is tried again every interval (no growing backoff)."""
    import time

    shared = rr.RedisSharedState(
        f"redis://127.0.0.1:{free_port()}/0", flush_interval=0.02, socket_timeout=0.02
    )
    shared.attach(CircuitBreaker("alone", consecutive_failures=1))
    shared.start()
    try:
        time.sleep(0.5)
    finally:
        shared.stop()
    assert shared.metrics()["faults"] >= 10  # flush and listen, each every 20 ms or so


@pytest.mark.slow
def test_a_stalled_redis_delays_a_half_open_call_by_socket_timeout_at_most(
    redis_server: RedisServer,
) -> None:
    """Redis stops answering (SIGSTOP): a probe grant gives up after socket_timeout."""
    import signal
    import time

    shared = rr.RedisSharedState(redis_server.url, prefix=uuid.uuid4().hex[:8]).start()
    breaker = shared.attach(CircuitBreaker("stall", consecutive_failures=1, open_duration=0.05))
    try:
        breaker.acquire().record_failure()
        time.sleep(0.1)
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            probe = breaker.acquire()  # half-open: asks Redis, which does not answer
            waited = time.monotonic() - started
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert probe.probe
        assert getattr(probe, "grant", None) is None  # decided locally
        assert waited <= shared.socket_timeout + 0.03  # the command's timeout, plus scheduling
        probe.record_success()
        assert breaker.state is State.CLOSED
    finally:
        shared.stop()
