"""A deterministic discrete-event simulation of a client limit in front of a queueing backend.

The backend has `slots` workers, each serving one call in `service` seconds;
calls beyond that wait in its FIFO queue, so latency is flat up to `slots`
in flight and grows with the queue after. Calls arrive as a Poisson stream
(seeded) at `load x capacity` per second, phase by phase. The client admits
each arrival through a guard (a `ConcurrencyLimit`, a `Bulkhead`, or an
adapter of some other algorithm), or counts a rejection; the guard's clock is
a `FakeClock` moved to every event's time. A call slower than
`client_timeout` is abandoned by the client at that time (a drop); the
backend still works on it. With `shed_queue`, a backend whose queue already
holds that many calls answers 503 at once (after `shed_latency`): a drop too.

Used by tests/policies/test_limit_simulation.py and benchmarks/bench_limit.py.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from resilience import Bulkhead, BulkheadFullError, ConcurrencyLimit
from resilience.testing import FakeClock


class Guard(Protocol):
    """What the simulation needs of a client-side guard."""

    @property
    def limit(self) -> int: ...

    def admit(self) -> Any:
        """A token, or raise BulkheadFullError."""
        ...

    def done(self, token: Any, dropped: bool) -> None: ...


class LimitGuard:
    def __init__(self, policy: ConcurrencyLimit) -> None:
        self.policy = policy

    @property
    def limit(self) -> int:
        return self.policy.limit

    def admit(self) -> Any:
        return self.policy.acquire()

    def done(self, token: Any, dropped: bool) -> None:
        if dropped:
            token.record_drop()
        else:
            token.record_success()


class BulkheadGuard:
    def __init__(self, policy: Bulkhead) -> None:
        self.policy = policy

    @property
    def limit(self) -> int:
        return self.policy.max_concurrent

    def admit(self) -> Any:
        self.policy._enter()

    def done(self, token: Any, dropped: bool) -> None:
        self.policy._on_exit(None)


@dataclass
class Phase:
    load: float  # offered load as a multiple of the backend's capacity
    seconds: float


@dataclass
class PhaseStats:
    load: float
    start: float
    end: float
    offered: int = 0
    rejected: int = 0
    admitted: int = 0
    good: int = 0  # completed within the client timeout
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)  # of good calls, by admission phase

    @property
    def rejected_ratio(self) -> float:
        return self.rejected / self.offered if self.offered else 0.0

    def p99(self) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class Result:
    phases: list[PhaseStats]
    trace: list[tuple[float, int]]  # (time, limit) at start and at every change
    capacity: float  # calls per second the backend can serve
    no_load_latency: float

    def limit_at(self, time: float) -> int:
        limit = self.trace[0][1]
        for when, value in self.trace:
            if when > time:
                break
            limit = value
        return limit

    def settle_time(self, phase: int, low: float, high: float) -> float | None:
        """Seconds from the phase's start until the limit is in [low, high] for the rest of it."""
        stats = self.phases[phase]
        settled: float | None = stats.start if low <= self.limit_at(stats.start) <= high else None
        for when, value in self.trace:
            if when <= stats.start or when > stats.end:
                continue
            if low <= value <= high:
                if settled is None:
                    settled = when
            else:
                settled = None
        return None if settled is None else settled - stats.start

    def limit_range(self, phase: int, after: float = 0.0) -> tuple[int, int]:
        """The lowest and highest limit during the phase, from `after` seconds into it."""
        stats = self.phases[phase]
        begin = stats.start + after
        values = [self.limit_at(begin)] + [v for t, v in self.trace if begin < t <= stats.end]
        return min(values), max(values)

    def goodput(self, phase: int, after: float = 0.0) -> float:
        """Good completions per second during the phase (from `after` s in), / capacity."""
        stats = self.phases[phase]
        return self._good_between(stats.start + after, stats.end) / (
            (stats.end - stats.start - after) * self.capacity
        )

    _completions: list[float] = field(default_factory=list)

    def _good_between(self, begin: float, end: float) -> int:
        import bisect

        return bisect.bisect_right(self._completions, end) - bisect.bisect_left(
            self._completions, begin
        )


def _move(clock: FakeClock, when: float) -> None:
    """Move the fake clock to `when`: `advance`, minus its checks when no alarm waits."""
    if clock.pending_alarms:
        clock.advance(max(when - clock.monotonic(), 0.0))
    elif when > clock._now:
        clock._now = when  # the hot loop of the simulation: one assignment


def simulate(
    guard: Guard,
    clock: FakeClock,
    phases: list[Phase],
    *,
    slots: int = 50,
    service: float = 0.010,
    client_timeout: float | None = None,
    shed_queue: int | None = None,
    shed_latency: float = 0.001,
    seed: int = 1,
) -> Result:
    """Run the phases; return per-phase counts, latencies and the limit's trace."""
    rng = random.Random(seed)
    capacity = slots / service
    free = [0.0] * slots  # when each backend worker is next free (a heap)
    busy: list[float] = []  # when each call at the backend ends (a heap): its load
    pending: list[tuple[float, int, Any, bool, float, int]] = []  # completions
    order = 0
    trace = [(clock.monotonic(), guard.limit)]
    stats: list[PhaseStats] = []
    completions: list[float] = []
    start = clock.monotonic()
    limit = guard.limit

    def finish_until(until: float) -> None:
        nonlocal limit
        while pending and pending[0][0] <= until:
            when, _, token, dropped, began, phase = heapq.heappop(pending)
            _move(clock, when)
            guard.done(token, dropped)
            if dropped:
                stats[phase].dropped += 1
            else:
                stats[phase].good += 1
                stats[phase].latencies.append(when - began)
                completions.append(when)
            if guard.limit != limit:
                limit = guard.limit
                trace.append((when, limit))

    now = start
    for index, phase in enumerate(phases):
        end = now + phase.seconds
        current = PhaseStats(phase.load, now, end)
        stats.append(current)
        rate = phase.load * capacity
        while True:
            now += rng.expovariate(rate)
            if now > end:
                now = end
                break
            finish_until(now)
            _move(clock, now)
            current.offered += 1
            try:
                token = guard.admit()
            except BulkheadFullError:
                current.rejected += 1
                continue
            current.admitted += 1
            if shed_queue is not None:
                while busy and busy[0] <= now:
                    heapq.heappop(busy)
                if len(busy) - slots >= shed_queue:  # overloaded: 503 at once
                    when = now + shed_latency
                    heapq.heappush(pending, (when, order, token, True, now, index))
                    order += 1
                    continue
            begin = max(now, heapq.heappop(free))
            done = begin + service
            heapq.heappush(free, done)
            if shed_queue is not None:
                heapq.heappush(busy, done)
            if client_timeout is not None and done - now > client_timeout:
                heapq.heappush(pending, (now + client_timeout, order, token, True, now, index))
            else:
                heapq.heappush(pending, (done, order, token, False, now, index))
            order += 1
        finish_until(end)
        _move(clock, end)
    finish_until(math.inf)
    result = Result(stats, trace, capacity, service)
    result._completions = completions
    return result
