"""The breaker's side of a shared-state backend, with fake backends (no Redis)."""

from __future__ import annotations

import anyio
import pytest

from resilience import CircuitBreaker, CircuitOpenError, State
from resilience.testing import FakeClock


class Backend:
    """Answers probe requests with a fixed answer, sync and async; counts the questions."""

    def __init__(self, answer: bool | BaseException | None) -> None:
        self.answer = answer
        self.asked = 0
        self.asked_async = 0

    def _reply(self) -> bool | None:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def grant_probe(self, breaker: CircuitBreaker) -> bool | None:
        self.asked += 1
        return self._reply()


class AsyncBackend(Backend):
    def __init__(self, answer: bool | BaseException | None, hang: bool = False) -> None:
        super().__init__(answer)
        self.hang = hang
        self.waiting = anyio.Event()

    async def agrant_probe(self, breaker: CircuitBreaker) -> bool | None:
        self.asked_async += 1
        if self.hang:
            self.waiting.set()
            await anyio.sleep_forever()
        return self._reply()


def half_open(backend: Backend) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "shared", consecutive_failures=1, open_duration=1, half_open_max_calls=1, clock=clock
    )
    breaker.share(backend)
    breaker.acquire().record_failure()
    clock.advance(1)
    return breaker, clock


@pytest.mark.parametrize("answer", [True, None, RuntimeError("redis down")])
def test_granted_unknown_or_faulty_backend_admits_the_probe(answer) -> None:
    """True, None ("unknown") and a backend fault all leave the decision to local state."""
    backend = Backend(answer)
    breaker, _ = half_open(backend)
    probe = breaker.acquire()
    assert probe.probe
    assert backend.asked == 1
    probe.record_success()
    assert breaker.state is State.CLOSED


def test_refused_probe_is_rejected_and_its_slot_returned() -> None:
    backend = Backend(False)
    breaker, _ = half_open(backend)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    calls = breaker.metrics().calls
    assert (calls["rejected"], calls["ignored"], calls["success"]) == (1, 0, 0)  # counted once
    assert breaker.state is State.HALF_OPEN
    backend.answer = True
    with pytest.raises(CircuitOpenError):  # refused in this epoch: no more asking...
        breaker.acquire()
    assert backend.asked == 1
    breaker.probe_slots_free()  # ...until the backend says slots are free again
    assert breaker.acquire().probe  # the local slot came back
    assert backend.asked == 2


def test_interrupted_sync_grant_returns_the_slot() -> None:
    backend = Backend(KeyboardInterrupt())
    breaker, _ = half_open(backend)
    with pytest.raises(KeyboardInterrupt):
        breaker.acquire()
    assert breaker.metrics().calls["ignored"] == 0  # it never ran: not an outcome
    backend.answer = True
    assert breaker.acquire().probe


@pytest.mark.anyio
async def test_async_callers_await_the_async_grant() -> None:
    """The decorator, acall and `async with` ask agrant_probe; sync acquire asks grant_probe."""
    for enter in ("decorator", "acall", "async with"):
        backend = AsyncBackend(True)
        breaker, _ = half_open(backend)

        async def ok() -> str:
            return "ok"

        if enter == "decorator":
            assert await breaker(ok)() == "ok"
        elif enter == "acall":
            assert await breaker.acall(ok) == "ok"
        else:
            async with breaker:
                pass
        assert (backend.asked_async, backend.asked) == (1, 0), enter
        assert breaker.state is State.CLOSED


@pytest.mark.anyio
async def test_async_refusal_rejects() -> None:
    backend = AsyncBackend(False)
    breaker, _ = half_open(backend)

    @breaker
    async def ok() -> None:
        return None

    with pytest.raises(CircuitOpenError):
        await ok()
    assert breaker.state is State.HALF_OPEN
    backend.answer = True
    breaker.probe_slots_free()
    await ok()
    assert breaker.state is State.CLOSED


@pytest.mark.anyio
async def test_cancelled_while_asking_returns_the_slot() -> None:
    backend = AsyncBackend(True, hang=True)
    breaker, _ = half_open(backend)

    @breaker
    async def ok() -> None:
        return None

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ok)
        await backend.waiting.wait()
        tasks.cancel_scope.cancel()
    backend.hang = False
    await ok()  # the slot the cancelled call held is free again
    assert breaker.state is State.CLOSED


def test_closed_path_never_asks() -> None:
    backend = AsyncBackend(False)
    breaker = CircuitBreaker("shared")
    breaker.share(backend)
    breaker.acquire().record_success()
    assert (backend.asked, backend.asked_async) == (0, 0)
    breaker.share(None)
    assert breaker._shared_async_grant is None


class FleetBackend(Backend):
    """Grants fleet slots (opaque objects) and keeps what the breaker hands back."""

    def __init__(self) -> None:
        super().__init__(None)
        self.settled: list[tuple[object, object, bool]] = []

    def grant_probe(self, breaker: CircuitBreaker) -> object:
        self.asked += 1
        return ("slot", self.asked)

    def probe_settled(self, breaker, grant, outcome, slow) -> None:
        self.settled.append((grant, outcome, slow))


@pytest.mark.parametrize(
    ("settle", "outcome"),
    [
        ("record_success", "SUCCESS"),
        ("record_failure", "FAILURE"),
        ("release", "IGNORED"),
    ],
)
def test_a_fleet_probe_is_decided_by_the_fleet(settle, outcome) -> None:
    """A fleet-granted probe frees its local slot, never decides locally, and is handed back."""
    from resilience import Outcome

    backend = FleetBackend()
    breaker, _ = half_open(backend)
    probe = breaker.acquire()
    assert probe.grant == ("slot", 1)
    getattr(probe, settle)()
    assert breaker.state is State.HALF_OPEN  # the fleet decides, not this process
    assert backend.settled == [(("slot", 1), Outcome[outcome], False)]
    second = breaker.acquire()  # the local slot is free again
    assert second.grant == ("slot", 2)
    breaker.apply_remote(State.CLOSED)  # the fleet's decision arrives
    assert breaker.state is State.CLOSED
    second.record_failure()  # a stale probe: handed back, moves nothing here
    assert breaker.state is State.CLOSED
    assert len(backend.settled) == 2


def test_a_fleet_probe_cut_short_by_an_exception_is_handed_back() -> None:
    """The decorator path settles a fleet probe too (here: an exception outside record=)."""
    backend = FleetBackend()
    breaker, _ = half_open(backend)
    breaker._classifier = type(breaker._classifier)(record=(ValueError,), ignore=())

    @breaker
    def call() -> None:
        raise KeyError("not recorded")

    with pytest.raises(KeyError):
        call()
    assert [outcome.name for _, outcome, _ in backend.settled] == ["IGNORED"]
    assert breaker.state is State.HALF_OPEN


def test_apply_remote_open_moves_an_open_breakers_deadline() -> None:
    """OPEN applied to an OPEN breaker moves its end (no transition); openings follow the fleet."""
    clock = FakeClock()
    breaker = CircuitBreaker("fleet", consecutive_failures=1, open_duration=10, clock=clock)
    breaker.acquire().record_failure()
    transitions = dict(breaker.metrics().transitions)
    assert breaker.apply_remote(State.OPEN, 2.0, openings=3) is False
    assert breaker.metrics().transitions == transitions
    assert breaker.metrics().openings == 3
    clock.advance(2)
    assert breaker.state is State.HALF_OPEN


def test_late_lock_free_successes_stay_out_of_the_window_totals() -> None:
    """Outcomes that settle after a trip are counted in calls, never in window_totals()."""
    breaker = CircuitBreaker("late", consecutive_failures=2, failure_rate_threshold=None)
    entered = []

    @breaker
    def slow_success() -> None:
        if not entered:
            entered.append(1)
            breaker.acquire().record_failure()
            breaker.acquire().record_failure()  # the breaker trips while this call runs

    slow_success()
    assert breaker.state is State.OPEN
    assert breaker.metrics().calls["success"] == 1
    assert breaker.window_totals() == (0, 2)
    assert breaker.metrics().consecutive_failures == 2  # the stale success moved nothing


def test_a_failing_backend_never_fails_a_call() -> None:
    """A backend that raises while told of a transition or a settled probe: the call goes on."""

    class Broken(FleetBackend):
        def state_changed(self, breaker, event) -> None:
            raise RuntimeError("deque mutated during iteration")

        def probe_settled(self, breaker, grant, outcome, slow) -> None:
            raise RuntimeError("broken")

    backend = Broken()
    breaker, _ = half_open(backend)
    probe = breaker.acquire()
    probe.record_failure()  # no exception
    breaker.apply_remote(State.CLOSED)
    breaker.acquire().record_failure()  # trips: state_changed raises inside, not here
    assert breaker.state is State.OPEN
