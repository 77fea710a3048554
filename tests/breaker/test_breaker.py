from __future__ import annotations

import asyncio
import math
import pickle

import pytest

from resilience import (
    CircuitBreaker,
    CircuitOpenError,
    CountWindow,
    Outcome,
    State,
    TimeWindow,
    exponential_open_duration,
)
from resilience.events import CallRejected, Event, StateChanged, ThresholdCrossed
from resilience.testing import FakeClock


class Boom(Exception):
    pass


def make(clock: FakeClock | None = None, **config) -> CircuitBreaker:
    config.setdefault("clock", clock or FakeClock())
    return CircuitBreaker("payments", **config)


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        breaker.acquire().record_failure()


def succeed(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        breaker.acquire().record_success()


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom


# -- tripping -------------------------------------------------------------------


def test_consecutive_failures_trip() -> None:
    """N failures in a row open the breaker; a success in between restarts the streak."""
    breaker = make(consecutive_failures=3, failure_rate_threshold=None)
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN


def test_fast_path_success_reaching_minimum_calls_trips() -> None:
    """A lock-free success that makes the rate computable can trip the breaker."""
    breaker = make(failure_rate_threshold=0.5, minimum_calls=4, window=CountWindow(10))
    fail(breaker, 2)
    guarded = breaker(ok)
    guarded()
    assert breaker.state is State.CLOSED
    guarded()
    assert breaker.state is State.OPEN  # 2/4


def test_fast_path_success_breaks_the_streak() -> None:
    """A lock-free success through the decorator also restarts the failure streak."""
    breaker = make(consecutive_failures=2, failure_rate_threshold=None)
    guarded_ok, guarded_boom = breaker(ok), breaker(boom)
    for _ in range(5):
        with pytest.raises(Boom):
            guarded_boom()
        assert guarded_ok() == "ok"
    assert breaker.state is State.CLOSED
    assert breaker.metrics().consecutive_failures == 0
    for _ in range(2):
        with pytest.raises(Boom):
            guarded_boom()
    assert breaker.state is State.OPEN


def test_failure_rate_needs_minimum_calls() -> None:
    """No rate is computed below minimum_calls; at it, rate >= threshold trips."""
    breaker = make(failure_rate_threshold=0.5, minimum_calls=10, window=CountWindow(10))
    fail(breaker, 5)
    succeed(breaker, 4)
    assert breaker.state is State.CLOSED
    assert math.isnan(breaker.failure_rate)
    succeed(breaker)
    assert breaker.failure_rate == 0.5
    assert breaker.state is State.OPEN  # tripped when the 10th call made the rate 5/10


def test_failure_rate_over_a_sliding_count_window() -> None:
    """Old outcomes leave the window: 5 failures long ago do not count."""
    breaker = make(failure_rate_threshold=0.5, minimum_calls=4, window=CountWindow(4))
    fail(breaker)
    succeed(breaker, 3)
    succeed(breaker, 2)
    fail(breaker)
    assert breaker.failure_rate == 0.25
    fail(breaker)
    assert breaker.state is State.OPEN


def test_time_window_trips_and_forgets() -> None:
    """Failures older than the time window no longer count."""
    clock = FakeClock()
    breaker = make(
        clock,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window=TimeWindow(seconds=10, buckets=10),
    )
    fail(breaker, 3)
    clock.advance(11)
    succeed(breaker, 4)
    assert breaker.failure_rate == 0.0
    fail(breaker, 3)
    assert breaker.state is State.CLOSED  # 3/7
    fail(breaker)
    assert breaker.state is State.OPEN  # 4/8


def test_slow_call_rate_trips() -> None:
    """Calls slower than slow_call_duration count as slow, successes included."""
    clock = FakeClock()
    breaker = make(
        clock,
        failure_rate_threshold=None,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        minimum_calls=4,
        window=CountWindow(4),
    )

    @breaker
    def slow_ok() -> None:
        clock.sleep(2)

    @breaker
    def fast_ok() -> None:
        clock.sleep(0.5)

    fast_ok()
    fast_ok()
    slow_ok()
    assert breaker.state is State.CLOSED
    slow_ok()
    assert breaker.state is State.OPEN
    assert breaker.metrics().slow_calls == 2


def test_exceptions_outside_record_and_ignored_ones_do_not_count() -> None:
    """ignore= wins, unrecorded exceptions are neutral, and neither resets the streak."""
    breaker = make(
        consecutive_failures=3,
        failure_rate_threshold=None,
        record=(Boom, OSError),
        ignore=ConnectionResetError,
    )
    for error in (Boom(), KeyError(), ConnectionResetError(), Boom(), ValueError(), Boom()):
        with pytest.raises(type(error)):
            breaker.call(_raiser(error))
        if breaker.state is State.OPEN:
            break
    assert breaker.state is State.OPEN
    calls = breaker.metrics().calls
    assert calls["failure"] == 3
    assert calls["ignored"] == 3


def _raiser(error: BaseException):
    def raise_it() -> None:
        raise error

    return raise_it


def test_failure_if_counts_results() -> None:
    """A returned value matching failure_if is a failure; the value is still returned."""
    breaker = make(
        consecutive_failures=2, failure_rate_threshold=None, failure_if=lambda r: r >= 500
    )
    status = breaker(lambda code: code)
    assert status(503) == 503
    assert status(200) == 200
    assert status(503) == 503
    assert breaker.state is State.CLOSED
    assert status(502) == 502
    assert breaker.state is State.OPEN


def test_a_failing_failure_if_predicate_still_settles() -> None:
    """A bug in failure_if propagates, and the permit is released, not leaked."""

    def bad_predicate(result: object) -> bool:
        raise RuntimeError("predicate bug")

    clock = FakeClock()
    buggy = make(clock, failure_if=bad_predicate, consecutive_failures=1, open_duration=1)
    with pytest.raises(RuntimeError, match="predicate bug"):
        buggy.call(ok)
    assert buggy.metrics().calls["ignored"] == 1
    buggy.acquire().record_failure()
    clock.advance(1)
    with pytest.raises(RuntimeError, match="predicate bug"):
        buggy(ok)()  # the half-open probe's slot comes back...
    assert buggy.acquire().probe  # ...so the next caller can probe


# -- open, half-open, close ------------------------------------------------------


def test_open_rejects_with_a_fresh_informative_error() -> None:
    """Each rejection is a new CircuitOpenError with name, state and wait."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=30)
    fail(breaker)
    clock.advance(10)
    errors = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as caught:
            breaker.call(ok)
        errors.append(caught.value)
    assert errors[0] is not errors[1]
    assert errors[0].name == "payments"
    assert errors[0].state is State.OPEN
    assert errors[0].retry_after == 20
    assert errors[0].__traceback__ is not None
    assert len(list(_frames(errors[2].__traceback__))) == len(
        list(_frames(errors[0].__traceback__))
    )
    assert breaker.metrics().calls["rejected"] == 3
    assert pickle.loads(pickle.dumps(errors[0])).retry_after == 20


def _frames(traceback):
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next


def test_half_open_is_lazy_and_visible_in_state() -> None:
    """After open_duration the state reads HALF_OPEN, with no call needed."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=30)
    fail(breaker)
    clock.advance(29.9)
    assert breaker.state is State.OPEN
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state is State.HALF_OPEN
    assert breaker.retry_after() == 0.0


def test_one_probe_decides() -> None:
    """In half-open one probe runs; others are rejected at once; its outcome decides."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5)
    fail(breaker)
    clock.advance(5)
    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    assert caught.value.state is State.HALF_OPEN
    assert caught.value.retry_after is None
    probe.record_success()
    assert breaker.state is State.CLOSED

    fail(breaker)
    clock.advance(5)
    breaker.acquire().record_failure()
    assert breaker.state is State.OPEN


def test_several_probes_decide_by_rate() -> None:
    """With half_open_max_calls=4, the decision waits for 4 outcomes and uses the rate."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5, half_open_max_calls=4)
    fail(breaker)
    clock.advance(5)
    probes = [breaker.acquire() for _ in range(4)]
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    probes[0].record_failure()
    for probe in probes[1:3]:
        probe.record_success()
    assert breaker.state is State.HALF_OPEN
    probes[3].record_success()
    assert breaker.state is State.CLOSED  # 1/4 failed < 0.5

    fail(breaker)
    clock.advance(10)
    probes = [breaker.acquire() for _ in range(4)]
    for probe, failed in zip(probes, (True, True, False, False), strict=True):
        probe.record_failure() if failed else probe.record_success()
    assert breaker.state is State.OPEN  # 2/4 failed >= 0.5


def test_released_probe_hands_its_slot_back() -> None:
    """An ignored probe (cancellation, say) frees its slot for another probe."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5)
    fail(breaker)
    clock.advance(5)
    breaker.acquire().release()
    assert breaker.state is State.HALF_OPEN
    breaker.acquire().record_success()
    assert breaker.state is State.CLOSED


def test_keyboard_interrupt_in_a_probe_releases_the_slot() -> None:
    """A BaseException in a probe is IGNORED: the slot comes back, nothing counted."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5)
    fail(breaker)
    clock.advance(5)

    @breaker
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is State.CLOSED


def test_half_open_max_wait_reopens_when_a_probe_never_reports() -> None:
    """A lost probe cannot keep the breaker half-open forever."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5, half_open_max_wait=2)
    fail(breaker)
    clock.advance(5)
    lost = breaker.acquire()
    clock.advance(2)
    assert breaker.state is State.OPEN
    lost.record_success()  # too late: stale epoch
    assert breaker.state is State.OPEN
    clock.advance(5)
    breaker.acquire().record_success()
    assert breaker.state is State.CLOSED


def test_open_duration_grows_with_consecutive_openings() -> None:
    """A function of openings sets each open period; closing resets the count."""
    clock = FakeClock()
    breaker = make(
        clock,
        consecutive_failures=1,
        open_duration=exponential_open_duration(10, multiplier=2, maximum=35),
    )
    waits = []
    for _ in range(4):
        fail(breaker) if breaker.state is State.CLOSED else breaker.acquire().record_failure()
        waits.append(breaker.retry_after())
        clock.advance(breaker.retry_after() or 0)
    assert waits == [10, 20, 35, 35]
    breaker.acquire().record_success()
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.retry_after() == 10


def test_exponential_open_duration_values_and_overflow() -> None:
    """min(initial * multiplier ** (openings - 1), maximum), even for huge counts."""
    duration = exponential_open_duration(1.5, multiplier=3, maximum=100)
    assert [duration(n) for n in (1, 2, 3, 4, 5)] == [1.5, 4.5, 13.5, 40.5, 100]
    assert duration(10_000) == 100


# -- epochs: late outcomes never move the state --------------------------------------


def test_slow_call_admitted_before_a_trip_cannot_close_the_breaker() -> None:
    """A success from before the trip is counted in metrics but leaves it OPEN."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=2, open_duration=30)
    slow_call = breaker.acquire()
    fail(breaker, 2)
    assert breaker.state is State.OPEN
    slow_call.record_success()
    assert breaker.state is State.OPEN
    assert breaker.metrics().calls["success"] == 1


def test_pre_trip_call_finishing_in_half_open_is_not_a_probe() -> None:
    """A late outcome during half-open neither decides nor takes the probe's place."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5)
    old = breaker.acquire()
    fail(breaker)
    clock.advance(5)
    probe = breaker.acquire()
    old.record_success()
    assert breaker.state is State.HALF_OPEN
    probe.record_failure()
    assert breaker.state is State.OPEN


def test_fast_path_success_from_an_old_period_does_not_dilute_the_new_window() -> None:
    """A decorated call admitted before a trip lands in no later window."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=1, minimum_calls=1)
    finish: list[object] = []

    @breaker
    def long_call() -> str:
        fail(breaker)  # the breaker trips while this call runs
        clock.advance(1)
        breaker.acquire().record_success()  # probe closes it: a new period
        finish.append(breaker.metrics().window_calls)
        return "late"

    assert long_call() == "late"
    assert breaker.metrics().window_calls == finish[0] == 0


# -- manual control -------------------------------------------------------------------


def test_force_open_rejects_until_reset() -> None:
    """FORCED_OPEN rejects without a probe time; reset() closes with a fresh window."""
    breaker = make(consecutive_failures=2)
    fail(breaker)
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as caught:
        breaker.call(ok)
    assert caught.value.state is State.FORCED_OPEN
    assert caught.value.retry_after is None
    assert breaker.retry_after() is None
    breaker.reset()
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.CLOSED  # the earlier failure was forgotten
    assert breaker.force_closed == breaker.reset


def test_reset_of_a_closed_breaker_clears_its_window() -> None:
    """reset() on a closed breaker forgets the failures counted so far."""
    breaker = make(consecutive_failures=2)
    fail(breaker)
    breaker.reset()
    fail(breaker)
    assert breaker.state is State.CLOSED
    assert breaker.metrics().window_failures == 1


def test_disabled_admits_everything_and_records_nothing() -> None:
    """DISABLED never opens and keeps its window empty, but metrics still count calls."""
    breaker = make(consecutive_failures=1)
    breaker.disable()
    for _ in range(5):
        with pytest.raises(Boom):
            breaker.call(boom)
    assert breaker.state is State.DISABLED
    metrics = breaker.metrics()
    assert metrics.window_calls == 0
    assert metrics.calls["failure"] == 5


def test_metrics_only_records_and_reports_but_never_opens() -> None:
    """METRICS_ONLY keeps counting and publishes threshold crossings, once per crossing."""
    breaker = make(consecutive_failures=2, failure_rate_threshold=None)
    events: list[Event] = []
    breaker.events.subscribe(events.append)
    breaker.metrics_only()
    fail(breaker, 4)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state is State.METRICS_ONLY
    crossings = [e for e in events if isinstance(e, ThresholdCrossed)]
    assert [(e.metric, e.value) for e in crossings] == [
        ("consecutive_failures", 2.0),
        ("consecutive_failures", 2.0),
    ]


# -- the two-step API ------------------------------------------------------------------


def test_a_permit_is_settled_exactly_once() -> None:
    """A second settle is an error; the first one counted."""
    breaker = make()
    permit = breaker.acquire()
    permit.record(Outcome.FAILURE)
    with pytest.raises(RuntimeError, match="already settled"):
        permit.record_success()
    with pytest.raises(RuntimeError, match="already settled"):
        permit.release()
    assert breaker.metrics().calls == {"success": 0, "failure": 1, "ignored": 0, "rejected": 0}
    with pytest.raises(TypeError, match="Outcome"):
        breaker.acquire().record("failure")  # type: ignore[arg-type]


def test_with_block_may_settle_its_permit_by_hand() -> None:
    """`with breaker as permit:` settles once, whether the body recorded or not."""
    breaker = make()
    with breaker as permit:
        permit.record_failure()
    with breaker:
        pass
    with pytest.raises(Boom), breaker:
        raise Boom
    assert breaker.metrics().calls == {"success": 1, "failure": 2, "ignored": 0, "rejected": 0}


@pytest.mark.anyio
async def test_async_forms() -> None:
    """Decorated coroutines, acall() and `async with` all guard and record."""
    breaker = make(consecutive_failures=3, failure_rate_threshold=None)

    @breaker
    async def aboom() -> None:
        raise Boom

    async def aok() -> str:
        return "ok"

    with pytest.raises(Boom):
        await aboom()
    with pytest.raises(Boom):
        await breaker.acall(aboom.__wrapped__)  # type: ignore[attr-defined]
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await breaker.acall(aok)
    breaker.reset()
    assert await breaker(aok)() == "ok"


def test_cancelled_async_call_is_ignored() -> None:
    """Cancellation is neither a success nor a failure."""
    breaker = make(consecutive_failures=1)

    @breaker
    async def hang() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(hang())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.state is State.CLOSED
    assert breaker.metrics().calls["ignored"] == 1


# -- events ----------------------------------------------------------------------------


def test_events_for_transitions_rejections_and_crossings() -> None:
    """Every transition, rejection and threshold crossing is published, with reasons."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, failure_rate_threshold=None, open_duration=5)
    events: list[Event] = []
    breaker.events.subscribe(events.append)
    fail(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(5)
    breaker.acquire().record_success()
    kinds = [(type(e).__name__, getattr(e, "reason", getattr(e, "metric", ""))) for e in events]
    assert kinds == [
        ("ThresholdCrossed", "consecutive_failures"),
        ("StateChanged", "consecutive_failures"),
        ("CallRejected", ""),
        ("StateChanged", "open_duration_elapsed"),
        ("StateChanged", "probes_succeeded"),
    ]
    rejected = events[2]
    assert isinstance(rejected, CallRejected)
    assert rejected.retry_after == 5
    assert [(e.from_state, e.to_state) for e in events if isinstance(e, StateChanged)] == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]
    transitions = breaker.metrics().transitions
    assert transitions == {
        (State.CLOSED, State.OPEN): 1,
        (State.OPEN, State.HALF_OPEN): 1,
        (State.HALF_OPEN, State.CLOSED): 1,
    }


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"failure_rate_threshold": 0}, ValueError, "failure_rate_threshold="),
        ({"failure_rate_threshold": 1.5}, ValueError, "failure_rate_threshold="),
        ({"failure_rate_threshold": "50%"}, TypeError, "failure_rate_threshold="),
        ({"minimum_calls": 0}, ValueError, "minimum_calls="),
        ({"minimum_calls": 200}, ValueError, "window size"),
        ({"window": 100}, TypeError, "window="),
        ({"consecutive_failures": 0}, ValueError, "consecutive_failures="),
        ({"slow_call_duration": -1}, ValueError, "slow_call_duration="),
        ({"slow_call_rate_threshold": 0}, ValueError, "slow_call_rate_threshold="),
        ({"open_duration": 0}, ValueError, "open_duration="),
        ({"open_duration": math.nan}, ValueError, "open_duration="),
        ({"open_duration": lambda n: -1}, ValueError, r"open_duration\(1\)"),
        ({"open_duration": lambda n: "soon"}, TypeError, r"open_duration\(1\)"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls="),
        ({"half_open_max_wait": 0}, ValueError, "half_open_max_wait="),
        ({"record": "Exception"}, TypeError, "record="),
        ({"ignore": KeyboardInterrupt}, ValueError, "ignore="),
        ({"failure_if": True}, TypeError, "failure_if="),
        ({"clock": 1.0}, TypeError, "clock="),
        (
            {"failure_rate_threshold": None, "consecutive_failures": None},
            ValueError,
            "could never open",
        ),
    ],
)
def test_bad_configuration_fails_at_construction(config, error, match) -> None:
    """Every parameter is validated, with an error naming it."""
    with pytest.raises(error, match=match):
        CircuitBreaker("payments", **config)


@pytest.mark.parametrize("name", ["", "  ", None, 3])
def test_bad_names(name) -> None:
    """A breaker needs a non-empty string name (it labels metrics)."""
    with pytest.raises((TypeError, ValueError), match="name="):
        CircuitBreaker(name)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"initial": 0}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"multiplier": "2"}, TypeError),
        ({"initial": 10, "maximum": 5}, ValueError),
    ],
)
def test_bad_exponential_open_duration(kwargs, error) -> None:
    """The helper validates its own arguments."""
    with pytest.raises(error):
        exponential_open_duration(**kwargs)


def test_repr_and_metrics_repr() -> None:
    """Reprs name the breaker and its state."""
    breaker = make()
    assert repr(breaker) == "<CircuitBreaker 'payments' state=closed>"
    assert "name='payments'" in repr(breaker.metrics())
    assert "probe=False" in repr(breaker.acquire())


def test_time_window_success_after_an_eviction_can_trip() -> None:
    """When old successes age out, the failures left may reach the rate: a success trips."""
    clock = FakeClock()
    breaker = make(
        clock,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window=TimeWindow(seconds=10, buckets=10),
    )
    succeed(breaker, 6)
    clock.advance(5)
    fail(breaker, 3)
    assert breaker.state is State.CLOSED  # 3/9
    clock.advance(5.5)
    succeed(breaker)  # the six successes are gone: 3 failures of 4 calls
    assert breaker.state is State.OPEN


def test_half_open_max_wait_needs_an_outstanding_probe() -> None:
    """With no probe out, waiting in half-open is not a failure: no reopening."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=5, half_open_max_wait=2)
    fail(breaker)
    clock.advance(5)
    breaker.acquire().release()  # a probe that said nothing
    clock.advance(10)
    assert breaker.state is State.HALF_OPEN
    assert breaker.metrics().openings == 1


def test_hand_settled_permit_then_raise_keeps_the_users_exception() -> None:
    """`with breaker as permit:` settled by hand, then an error: the error propagates as is."""
    breaker = make()

    def settle_then_fail() -> None:
        with breaker as permit:
            permit.release()
            raise KeyError("user error")

    with pytest.raises(KeyError, match="user error"):
        settle_then_fail()
    assert breaker.metrics().calls["ignored"] == 1


@pytest.mark.parametrize("scrape", [False, True])
def test_time_window_success_after_old_successes_age_out_trips(scrape: bool) -> None:
    """A success that finds the rate at the threshold trips, whether or not a scrape came first."""
    clock = FakeClock()
    breaker = make(
        clock,
        failure_rate_threshold=0.5,
        minimum_calls=5,
        window=TimeWindow(seconds=10, buckets=10),
    )
    succeed(breaker, 10)
    clock.advance(5)
    fail(breaker, 5)  # 5/15
    clock.advance(5.5)  # the ten successes age out
    if scrape:
        breaker.metrics()  # a Prometheus scrape reads (and refreshes) the window
    succeed(breaker)  # 5 failures of 6
    assert breaker.state is State.OPEN


def test_time_window_refilled_by_successes_alone_trips() -> None:
    """Below minimum_calls after an eviction, successes that bring it back can trip."""
    clock = FakeClock()
    breaker = make(
        clock,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window=TimeWindow(seconds=10, buckets=10),
    )
    succeed(breaker, 4)
    clock.advance(5)
    fail(breaker, 2)
    clock.advance(5.5)
    succeed(breaker)  # 2 of 3: below minimum_calls
    assert breaker.state is State.CLOSED
    succeed(breaker)  # 2 of 4 = 0.5
    assert breaker.state is State.OPEN
