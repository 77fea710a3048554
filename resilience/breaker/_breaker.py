"""The circuit breaker state machine (DESIGN sections 3 to 5).

CLOSED admits every call and records outcomes in a sliding window; when a
trip condition holds it goes OPEN and rejects every call for `open_duration`;
the first call after that finds it HALF_OPEN (a lazy transition) and is one of
at most `half_open_max_calls` probes, whose outcomes decide between CLOSED and
OPEN again. FORCED_OPEN, DISABLED and METRICS_ONLY are set by an operator.

Every state change bumps the *epoch*. A permit remembers the epoch it was
issued in; an outcome from an older epoch is counted in the metrics but never
moves the state: a slow call admitted before a trip cannot close the breaker,
and a pre-trip call finishing during half-open is not a probe.

No lock is held while the protected call runs. Admission in a closed breaker
takes no lock at all (it reads one tuple); settling takes one short lock.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._awaitable import PLAIN_TYPES, is_awaitable_type
from .._clock import Clock, resolve_clock
from .._compose import _NOTHING, Guard, refuse_generators, returned_awaitable
from .._counter import peek
from .._histogram import DurationHistogram
from .._outcome import Classifier, ExceptionSpec, Outcome, ResultPredicate
from .._state import State
from .._tracking import track
from .._validate import check_bool, check_int, check_ratio, check_seconds, check_string
from ..errors import CircuitOpenError
from ..events import (
    CallRejected,
    Event,
    ObserverHub,
    StateChanged,
    ThresholdCrossed,
    global_hub,
)
from ._window import CountWindow, TimeWindow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

    from ._shared import SharedState
    from ._window import WindowState

__all__ = ["BreakerMetrics", "CircuitBreaker", "Permit", "exponential_open_duration"]

_CLOSED = State.CLOSED
_OPEN = State.OPEN
_HALF_OPEN = State.HALF_OPEN
_FORCED_OPEN = State.FORCED_OPEN
_DISABLED = State.DISABLED
_METRICS_ONLY = State.METRICS_ONLY
_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED

P = ParamSpec("P")
R = TypeVar("R")

OpenDuration = float | Callable[[int], float]


def exponential_open_duration(
    initial: float = 30.0, *, multiplier: float = 2.0, maximum: float = 600.0
) -> Callable[[int], float]:
    """Return `open_duration(openings) = min(initial * multiplier ** (openings - 1), maximum)`.

    `openings` counts consecutive openings (1 for the first trip; back to 0
    when the breaker closes), as resilience4j's waitIntervalFunctionInOpenState
    does: a downstream that keeps failing its probes is left alone longer.
    """
    initial = check_seconds(initial, "initial")
    maximum = check_seconds(maximum, "maximum")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
        raise TypeError(f"multiplier= must be a number, got {multiplier!r}")
    if not (math.isfinite(multiplier) and multiplier >= 1):
        raise ValueError(f"multiplier= must be a finite number >= 1, got {multiplier!r}")
    if maximum < initial:
        raise ValueError(f"maximum={maximum!r} must be >= initial={initial!r}")

    def open_duration(openings: int) -> float:
        try:
            return min(initial * multiplier ** max(openings - 1, 0), maximum)
        except OverflowError:  # long past the cap
            return maximum

    open_duration.__qualname__ = (
        f"exponential_open_duration({initial!r}, multiplier={multiplier!r}, maximum={maximum!r})"
    )
    return open_duration


class Permit:
    """Admission of one call through a breaker; settle it exactly once.

    Call `record_success()`, `record_failure()`, `record(outcome)`, or
    `release()` (the call says nothing: a half-open slot is handed back).
    Settling twice raises `RuntimeError`. Decorators and `with` blocks settle
    their permits themselves.
    """

    __slots__ = ("_breaker", "epoch", "grant", "probe", "settled", "start")

    grant: object

    def __init__(self, breaker: CircuitBreaker, epoch: int, start: float, probe: bool) -> None:
        self._breaker = breaker
        #: The breaker epoch this permit was issued in.
        self.epoch = epoch
        #: The clock reading at admission (0.0 if the breaker does not time calls).
        self.start = start
        #: Whether this call is a half-open probe.
        self.probe = probe
        #: Whether an outcome was recorded (or the permit released).
        self.settled = False
        # `grant` (a fleet probe slot from a shared-state backend) is set only
        # on probes the fleet granted; read it with getattr(permit, "grant", None).

    def record(self, outcome: Outcome) -> None:
        """Settle with `outcome`."""
        if not isinstance(outcome, Outcome):
            raise TypeError(f"outcome must be a resilience.Outcome, got {outcome!r}")
        self._breaker._settle(self, outcome)

    def record_success(self) -> None:
        """Settle as a success."""
        self._breaker._settle(self, _SUCCESS)

    def record_failure(self) -> None:
        """Settle as a failure."""
        self._breaker._settle(self, _FAILURE)

    def release(self) -> None:
        """Settle as IGNORED: count nothing, hand a half-open slot back."""
        self._breaker._settle(self, _IGNORED)

    def record_exception(self, exc: BaseException) -> None:
        """Settle a call that raised `exc`, classified by the breaker's `record=`/`ignore=`.

        A bug in a classifying predicate propagates, after the permit is released.
        """
        if self.settled:
            raise RuntimeError(f"{self!r} was already settled; settle a permit exactly once")
        self._breaker._on_error(self, exc)

    def __repr__(self) -> str:
        return (
            f"<Permit breaker={self._breaker.name!r} epoch={self.epoch} "
            f"probe={self.probe} settled={self.settled}>"
        )


class BreakerMetrics:
    """A consistent snapshot of one breaker's counters, for metrics and debugging."""

    __slots__ = (
        "calls",
        "consecutive_failures",
        "durations",
        "failure_rate",
        "name",
        "openings",
        "slow_call_rate",
        "slow_calls",
        "state",
        "transitions",
        "window_calls",
        "window_failures",
        "window_slow",
    )

    def __init__(self, **fields: Any) -> None:
        for field, value in fields.items():
            setattr(self, field, value)

    name: str
    state: State
    #: Calls ever settled or rejected, by outcome: success, failure, ignored, rejected.
    calls: dict[str, int]
    slow_calls: int
    #: Transitions ever made, by (from_state, to_state).
    transitions: dict[tuple[State, State], int]
    #: Failure rate over the current window; NaN below minimum_calls.
    failure_rate: float
    slow_call_rate: float
    window_calls: int
    window_failures: int
    window_slow: int
    consecutive_failures: int
    openings: int
    #: outcome -> (cumulative (le, count) buckets, sum of seconds); empty unless
    #: the breaker records durations.
    durations: dict[str, tuple[list[tuple[float, int]], float]]

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self.__slots__)
        return f"BreakerMetrics({fields})"


class CircuitBreaker(Guard[Permit]):
    """Stops calling a downstream that is failing, and probes it to learn when it is back.

    Use it as a decorator (sync or async), as `with` / `async with`, through
    `call()` / `acall()`, or with the two-step `acquire()` API. See the
    circuit breaker guide in the docs for every rule.

    Args:
        name: Names the breaker in errors, events and metrics.
        failure_rate_threshold: Open when failures / calls in the window reach
            this ratio, in (0, 1]; `None` disables the rate condition.
        minimum_calls: Calls the window must hold before a rate is computed.
        window: `CountWindow(n)` (last n calls) or `TimeWindow(seconds=s)`.
        consecutive_failures: Also open after this many failures in a row.
        slow_call_duration: Calls slower than this many seconds count as slow.
        slow_call_rate_threshold: Open when slow calls / calls reach this ratio.
        open_duration: Seconds to stay open, or a function of the number of
            consecutive openings (see `exponential_open_duration`).
        half_open_max_calls: Probes admitted in half-open; their outcomes decide.
        half_open_max_wait: Reopen if a probe has not reported this many
            seconds after it was admitted (measured from the oldest probe
            still out); `None` waits for them.
        record: Exceptions that are failures (default: every `Exception`).
        ignore: Exceptions that count as nothing (wins over `record`).
        failure_if: Predicate on a returned value that makes it a failure.
        record_durations: Keep a histogram of call durations by outcome
            (`resilience_call_duration_seconds`). Off by default: it costs two
            clock reads and a short lock on every call.
        clock: A `resilience.Clock`; `resilience.testing.FakeClock` in tests.
    """

    __slots__ = (
        "__weakref__",
        "_classifier",
        "_consecutive",
        "_durations",
        "_failures",
        "_ignored",
        "_last_failure",
        "_lock",
        "_lockfree",
        "_mode",
        "_monotonic",
        "_needs_time",
        "_open_duration",
        "_open_until",
        "_openings",
        "_outcomes",
        "_probe_calls",
        "_probe_failures",
        "_probe_slow",
        "_probe_starts",
        "_probe_streak",
        "_rate_above",
        "_recorded_frozen",
        "_refused_epoch",
        "_rejections",
        "_shared",
        "_shared_async_grant",
        "_shared_changed",
        "_slow_calls",
        "_successes",
        "_transitions",
        "_window",
        "_window_base",
        "_window_failures_total",
        "clock",
        "consecutive_failures",
        "events",
        "failure_rate_threshold",
        "half_open_max_calls",
        "half_open_max_wait",
        "minimum_calls",
        "name",
        "slow_call_duration",
        "slow_call_rate_threshold",
        "window",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float | None = 0.5,
        minimum_calls: int = 20,
        window: CountWindow | TimeWindow | None = None,
        consecutive_failures: int | None = None,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        open_duration: OpenDuration = 30.0,
        half_open_max_calls: int = 1,
        half_open_max_wait: float | None = None,
        record: ExceptionSpec = (Exception,),
        ignore: ExceptionSpec = (),
        failure_if: ResultPredicate | None = None,
        record_durations: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.name = check_string(name, "name")
        self.failure_rate_threshold = (
            None
            if failure_rate_threshold is None
            else check_ratio(failure_rate_threshold, "failure_rate_threshold")
        )
        self.minimum_calls = check_int(minimum_calls, "minimum_calls")
        if window is None:
            window = CountWindow(100)
        if not isinstance(window, (CountWindow, TimeWindow)):
            raise TypeError(
                f"window= must be resilience.CountWindow(n) or resilience.TimeWindow(seconds=s), "
                f"got {window!r}"
            )
        if isinstance(window, CountWindow) and self.minimum_calls > window.size:
            raise ValueError(
                f"minimum_calls={self.minimum_calls} exceeds the window size {window.size}: "
                f"the failure rate could never be computed"
            )
        self.window = window
        self.consecutive_failures = (
            None
            if consecutive_failures is None
            else check_int(consecutive_failures, "consecutive_failures")
        )
        self.slow_call_duration = (
            None
            if slow_call_duration is None
            else check_seconds(slow_call_duration, "slow_call_duration")
        )
        self.slow_call_rate_threshold = check_ratio(
            slow_call_rate_threshold, "slow_call_rate_threshold"
        )
        if (
            self.failure_rate_threshold is None
            and self.consecutive_failures is None
            and self.slow_call_duration is None
        ):
            raise ValueError(
                "the breaker could never open: set failure_rate_threshold, "
                "consecutive_failures or slow_call_duration"
            )
        self._open_duration = _check_open_duration(open_duration)
        self.half_open_max_calls = check_int(half_open_max_calls, "half_open_max_calls")
        self.half_open_max_wait = (
            None
            if half_open_max_wait is None
            else check_seconds(half_open_max_wait, "half_open_max_wait")
        )
        self._classifier = Classifier(record=record, ignore=ignore, failure_if=failure_if)
        self.clock = resolve_clock(clock)
        self._monotonic = self.clock.monotonic
        #: This breaker's observers; forwards to `resilience.events.global_hub`.
        self.events = ObserverHub(parent=global_hub)

        # Outcomes need a timestamp only for slow calls and time windows.
        check_bool(record_durations, "record_durations")
        self._durations = DurationHistogram() if record_durations else None
        self._needs_time = (
            self.slow_call_duration is not None
            or isinstance(window, TimeWindow)
            or record_durations
        )
        self._lock = threading.Lock()
        self._window: WindowState = window._create()
        # A success in a closed count-window breaker only takes the next outcome
        # number from an itertools.count (atomic in CPython): no lock.
        # Durations are recorded under the lock, so they turn the lock-free path off.
        self._lockfree = isinstance(window, CountWindow) and not record_durations
        self._outcomes: itertools.count[int] = itertools.count()
        self._last_failure = -2
        # (state, epoch, admits without asking, outcome counter for lock-free
        # successes or None): replaced whole, so a lock-free read is never torn.
        self._mode: tuple[State, int, bool, itertools.count[int] | None] = (
            _CLOSED,
            0,
            True,
            self._outcomes if self._lockfree else None,
        )
        self._open_until = 0.0
        self._openings = 0
        self._consecutive = 0
        # When each half-open probe still out was admitted: half_open_max_wait
        # runs from the oldest of them.
        self._probe_starts: list[float] = []
        self._probe_calls = self._probe_failures = self._probe_slow = 0
        self._probe_streak = 0
        self._rate_above: frozenset[str] = frozenset()
        self._successes: itertools.count[int] = itertools.count()  # lock-free, like _outcomes
        self._rejections: itertools.count[int] = itertools.count()  # lock-free too
        self._failures = self._ignored = 0
        self._slow_calls = 0
        self._transitions: dict[tuple[State, State], int] = {}
        # Outcomes that entered a window, over the breaker's life (what a
        # shared-state backend adds to the fleet window): earlier recording
        # periods, plus `_outcomes` of the current one.
        self._window_base = 0
        self._window_failures_total = 0
        # The outcome count at the end of the last recording period: figures
        # read while OPEN/HALF_OPEN stay as they were at the trip.
        self._recorded_frozen = 0
        # The epoch in which the fleet refused a probe: no more asking in it.
        self._refused_epoch = -1
        self._shared: SharedState | None = None
        self._shared_async_grant: Callable[[CircuitBreaker], Awaitable[bool | None]] | None = None
        self._shared_changed: Callable[[CircuitBreaker, StateChanged], None] | None = None
        track("breaker", self)

    # -- admission ------------------------------------------------------------

    def acquire(self) -> Permit:
        """Admit one call and return its permit, or raise `CircuitOpenError`."""
        _, epoch, admits, _ = self._mode
        if admits:
            return Permit(self, epoch, self.clock.monotonic() if self._needs_time else 0.0, False)
        return self._acquire_slow()

    async def aacquire(self) -> Permit:
        """`acquire()` for async code: a fleet backend's probe grant is awaited, not blocked on."""
        return await self._aenter()

    def _admit_slow(self) -> Permit:
        """Admit past a non-admitting mode, on local state only (no fleet question)."""
        now = self._monotonic()
        state = self._mode[0]
        # Rejections that need no transition take no lock (_open_until is
        # written before _mode, under the lock): an open breaker sheds load cheaply.
        if state is _FORCED_OPEN or (state is _OPEN and now < self._open_until):
            raise self._rejection(state, now)
        events: list[Event] = []
        with self._lock:
            self._advance(now, events)
            state, epoch, admits, _ = self._mode
            if (
                state is _HALF_OPEN
                and len(self._probe_starts) + self._probe_calls < self.half_open_max_calls
                and self._refused_epoch != epoch
            ):
                self._probe_starts.append(now)
                permit = Permit(self, epoch, now, True)
            elif not admits:
                next(self._rejections)
                permit = None
                retry_after = max(self._open_until - now, 0.0) if state is _OPEN else None
            else:  # the state changed under us to an admitting one
                permit = Permit(self, epoch, now if self._needs_time else 0.0, False)
        self._publish(events)
        if permit is not None:
            return permit
        if self.events.active:
            self._publish_rejection(now, state, retry_after)
        raise CircuitOpenError(self.name, state, retry_after)

    def _acquire_slow(self) -> Permit:
        permit = self._admit_slow()
        if permit.probe and self._shared is not None:
            try:
                granted = self._shared.grant_probe(self)
            except Exception:  # noqa: BLE001  (a shared-state fault never fails the call)
                granted = None
            except BaseException:
                self._withdraw(permit)
                raise
            self._check_grant(permit, granted)
        return permit

    async def _aacquire_slow(self) -> Permit:
        """`_acquire_slow` for async callers: a fleet probe grant is awaited, not blocked on."""
        grant = self._shared_async_grant
        if grant is None:
            return self._acquire_slow()
        permit = self._admit_slow()
        if permit.probe:
            try:
                granted = await grant(self)
            except Exception:  # noqa: BLE001  (a shared-state fault never fails the call)
                granted = None
            except BaseException:
                self._withdraw(permit)
                raise
            self._check_grant(permit, granted)
        return permit

    def _check_grant(self, permit: Permit, granted: object) -> None:
        """Act on the fleet's answer to a probe request.

        False: refused (the fleet's probe slots are taken): hand our slot back,
        reject (counted as rejected) and ask no more in this epoch until the
        backend calls `probe_slots_free()`. None or True: the probe is decided
        locally. Any other object is a fleet probe slot: the outcome goes to
        the backend, whose fleet-wide decision comes back by `apply_remote`.
        """
        if granted is False:
            self._refused_epoch = permit.epoch
            self._withdraw(permit)
            raise self._rejection(_HALF_OPEN, self._monotonic())
        if granted is not None and granted is not True:
            permit.grant = granted

    def probe_slots_free(self) -> None:
        """The fleet has free probe slots again: half-open calls may ask for one."""
        self._refused_epoch = -1

    def _publish_rejection(self, now: float, state: State, retry_after: float | None) -> None:
        self.events.publish(
            CallRejected(name=self.name, time=now, state=state, retry_after=retry_after)
        )

    def _rejection(self, state: State, now: float) -> CircuitOpenError:
        """Count a rejection that needs no transition (no lock) and build its error."""
        next(self._rejections)
        retry_after = self._open_until - now if state is _OPEN else None
        if ObserverHub.observed and self.events.active:
            self._publish_rejection(now, state, retry_after)
        return CircuitOpenError(self.name, state, retry_after)

    # -- settling -------------------------------------------------------------

    def _settle(self, permit: Permit, outcome: Outcome) -> None:
        if permit.settled:
            raise RuntimeError(f"{permit!r} was already settled; settle a permit exactly once")
        permit.settled = True
        if permit.probe and (grant := getattr(permit, "grant", None)) is not None:
            slow = self._record(permit.epoch, permit.start, True, outcome, fleet=True)
            shared = self._shared
            if shared is not None:
                with contextlib.suppress(Exception):  # a shared-state fault never fails a call
                    shared.probe_settled(self, grant, outcome, slow)
            return
        self._record(permit.epoch, permit.start, permit.probe, outcome)

    def _withdraw(self, permit: Permit) -> None:
        """Take back a probe permit that never ran: its slot is freed, no outcome counted.

        The fleet refused it, or the caller was interrupted while asking.
        """
        permit.settled = True
        with self._lock:
            if permit.epoch == self._mode[1] and self._mode[0] is _HALF_OPEN:
                self._probe_back(permit.start)

    def _probe_back(self, start: float) -> None:
        """A probe of the current half-open period reported (under the lock)."""
        starts = self._probe_starts
        if start in starts:
            starts.remove(start)

    def _record(
        self, epoch: int, start: float, probe: bool, outcome: Outcome, fleet: bool = False
    ) -> bool:
        """Count one outcome; let it move the state if its epoch is current; return if slow.

        A `fleet` probe frees its local slot but is not counted toward a local
        half-open decision: the fleet decides from every process's probes.
        """
        now = self.clock.monotonic() if self._needs_time or probe else 0.0
        threshold = self.slow_call_duration
        slow = threshold is not None and now - start > threshold
        failed = outcome is _FAILURE
        events: list[Event] | None = None
        # acquire/release rather than `with`: half the cost, and this runs per call.
        self._lock.acquire()
        try:
            if outcome is _SUCCESS:
                next(self._successes)
            elif failed:
                self._failures += 1
            else:
                self._ignored += 1
            if slow:
                self._slow_calls += 1
            if self._durations is not None:
                self._durations.observe(outcome.value, now - start)
            state, current, _, _ = self._mode
            if epoch != current or (outcome is _IGNORED and not probe):
                return slow  # stale, or nothing to learn: counted, never moves the state
            if state is _CLOSED or state is _METRICS_ONLY:
                number = next(self._outcomes)
                window = self._window
                window.record(number, failed, slow, now)
                if failed:
                    self._window_failures_total += 1
                    # A success in between took a number: the streak restarts.
                    consecutive = self._consecutive if number == self._last_failure + 1 else 0
                    self._consecutive = consecutive + 1
                    self._last_failure = number
                # A rate can only rise with a failure or a slow call, by filling
                # the window up to minimum_calls, or (time window) when old
                # outcomes age out; a plain success checks nothing.
                if (
                    failed
                    or slow
                    or self._rate_above
                    or window.aged
                    or window.calls <= self.minimum_calls
                ):
                    if not self._needs_time:
                        now = self.clock.monotonic()  # only to stamp events and the open period
                    events = []
                    self._check_thresholds(now, events)
            elif state is _HALF_OPEN:
                events = []
                if self.half_open_max_wait is not None:
                    # The wait may have run out before this report: then the
                    # breaker reopens now, and this probe's outcome is stale.
                    self._advance(now, events)
                if self._mode[1] == current:
                    self._probe_back(start)
                    if outcome is not _IGNORED and not fleet:
                        self._probe_calls += 1
                        self._probe_failures += failed
                        self._probe_slow += slow
                        self._probe_streak = self._probe_streak + 1 if failed else 0
                        if self._probe_calls >= self.half_open_max_calls:
                            self._decide_half_open(now, events)
        finally:
            self._lock.release()
        if events:
            self._publish(events)
        return slow

    def _check_thresholds(self, now: float, events: list[Event]) -> None:
        """Trip (CLOSED) or report crossings (METRICS_ONLY) after a recorded outcome."""
        window = self._window
        window.aged = False
        crossed: list[tuple[str, float, float]] = []
        if self.consecutive_failures is not None:
            streak = self._streak()
            if streak >= self.consecutive_failures:
                crossed.append(("consecutive_failures", streak, self.consecutive_failures))
        if window.calls >= self.minimum_calls:
            if self.failure_rate_threshold is not None:
                rate = window.failures / window.calls
                if rate >= self.failure_rate_threshold:
                    crossed.append(("failure_rate", rate, self.failure_rate_threshold))
            if self.slow_call_duration is not None:
                rate = window.slow / window.calls
                if rate >= self.slow_call_rate_threshold:
                    crossed.append(("slow_call_rate", rate, self.slow_call_rate_threshold))
        above = frozenset(metric for metric, _, _ in crossed)
        for metric, value, threshold in crossed:
            if metric not in self._rate_above:
                events.append(
                    ThresholdCrossed(
                        name=self.name,
                        time=now,
                        metric=metric,
                        value=float(value),
                        threshold=float(threshold),
                    )
                )
        self._rate_above = above
        if crossed and self._mode[0] is _CLOSED:
            self._open(now, crossed[0][0], events)

    def _check_warmup(self, epoch: int) -> None:
        """After a lock-free success among the first minimum_calls: the rate may now trip."""
        now = self.clock.monotonic()
        events: list[Event] = []
        with self._lock:
            if self._mode[1] == epoch:
                self._window.refresh(peek(self._outcomes), now)
                self._check_thresholds(now, events)
        self._publish(events)

    def _streak(self) -> int:
        """Failures in a row, up to the latest outcome (under the lock)."""
        return self._consecutive if self._recorded() == self._last_failure + 1 else 0

    def _recorded(self) -> int:
        """Outcomes in the current recording period; frozen at the trip while not recording."""
        state = self._mode[0]
        if state is _CLOSED or state is _METRICS_ONLY:
            return peek(self._outcomes)
        return self._recorded_frozen

    def window_totals(self) -> tuple[int, int]:
        """(successes, failures) that ever entered the window; stale outcomes excluded.

        What a shared-state backend adds to the fleet's window: an outcome
        that settles after a trip (admitted before it) is not in these.
        """
        with self._lock:
            total = self._window_base + peek(self._outcomes)
            failures = self._window_failures_total
        return total - failures, failures

    def _decide_half_open(self, now: float, events: list[Event]) -> None:
        calls = self._probe_calls
        failures = self._probe_failures
        if self.failure_rate_threshold is None:
            failed = failures > 0
        else:
            failed = failures / calls >= self.failure_rate_threshold
        slow = (
            self.slow_call_duration is not None
            and self._probe_slow / calls >= self.slow_call_rate_threshold
        )
        if failed or slow:
            self._open(now, "probes_failed" if failed else "probes_slow", events)
        else:
            self._transition(_CLOSED, now, "probes_succeeded", events)

    # -- transitions (under the lock) -------------------------------------------

    def _advance(self, now: float, events: list[Event]) -> None:
        """Apply the time-driven transitions that are due at `now`."""
        state = self._mode[0]
        if state is _OPEN and now >= self._open_until:
            self._transition(_HALF_OPEN, now, "open_duration_elapsed", events)
        elif (
            state is _HALF_OPEN
            and self.half_open_max_wait is not None
            and self._probe_starts
            and now - min(self._probe_starts) >= self.half_open_max_wait
        ):
            self._open(now, "half_open_max_wait", events)

    def _open(self, now: float, reason: str, events: list[Event]) -> None:
        self._openings += 1
        duration = self._open_duration(self._openings)
        duration = check_seconds(duration, "open_duration() result", allow_zero=True)
        self._open_until = now + duration
        self._transition(_OPEN, now, reason, events)

    def _transition(self, to: State, now: float, reason: str, events: list[Event]) -> None:
        from_state = self._mode[0]
        key = (from_state, to)
        self._transitions[key] = self._transitions.get(key, 0) + 1
        if to is _CLOSED:
            self._openings = 0
        self._begin(to)
        events.append(
            StateChanged(
                name=self.name, time=now, from_state=from_state, to_state=to, reason=reason
            )
        )

    def _begin(self, state: State) -> None:
        """Enter `state` with a new epoch; a recording state starts a fresh window."""
        self._probe_starts = []
        self._probe_calls = self._probe_failures = self._probe_slow = self._probe_streak = 0
        self._refused_epoch = -1
        previous = self._mode[0]
        was_recording = previous is _CLOSED or previous is _METRICS_ONLY
        recording = state is _CLOSED or state is _METRICS_ONLY
        if was_recording:
            recorded = peek(self._outcomes)
            self._window_base += recorded
            self._recorded_frozen = recorded
        if was_recording or recording:
            # A new outcome counter: a late lock-free success (admitted before
            # now) counts into the orphaned one, never into the window.
            self._outcomes = itertools.count()
        if recording:
            self._window.reset()
            self._consecutive = 0
            self._last_failure = -2
            self._rate_above = frozenset()
        # METRICS_ONLY takes every success under the lock: a success can end a
        # threshold crossing there, and the next crossing is a new event.
        lockfree = self._outcomes if state is _CLOSED and self._lockfree else None
        admits = recording or state is _DISABLED
        self._mode = (state, self._mode[1] + 1, admits, lockfree)

    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        changed = self._shared_changed
        if changed is not None:
            for event in events:
                if isinstance(event, StateChanged):
                    with contextlib.suppress(Exception):  # never fails the call
                        changed(self, event)
        if self.events.active:
            for event in events:
                self.events.publish(event)

    def _force(self, to: State) -> None:
        now = self.clock.monotonic()
        events: list[Event] = []
        with self._lock:
            if self._mode[0] is not to:
                self._transition(to, now, "manual", events)
            elif to is _CLOSED:
                self._begin(_CLOSED)  # reset() of a closed breaker: a fresh window
            if to is _CLOSED:
                self._openings = 0
        self._publish(events)

    # -- shared state (resilience.redis) ---------------------------------------

    def share(self, backend: SharedState | None) -> None:
        """Attach a shared-state backend (or detach with None): it may refuse probes.

        A backend with an `agrant_probe` coroutine method is awaited by async
        callers instead of blocking the event loop in `grant_probe`; one with
        a `state_changed(breaker, event)` method is told of every transition
        (no observer is subscribed, so rejections stay as cheap as unshared).
        """
        self._shared = backend
        self._shared_async_grant = getattr(backend, "agrant_probe", None)
        self._shared_changed = getattr(backend, "state_changed", None)

    def apply_remote(
        self, to: State, open_for: float | None = None, *, openings: int | None = None
    ) -> bool:
        """Apply a state decided elsewhere in the fleet; return whether it changed the state.

        `OPEN` (for `open_for` seconds; 0 lets the next call find it
        half-open) is applied to a CLOSED or HALF_OPEN breaker, and to an OPEN
        one it moves the end of the open period; `CLOSED` to an OPEN or
        HALF_OPEN one. `openings` is the fleet's count of consecutive
        openings. Operator states are never overridden. A transition is
        published with reason "fleet".
        """
        now = self._monotonic()
        events: list[Event] = []
        with self._lock:
            state = self._mode[0]
            if to is _OPEN and (state is _CLOSED or state is _HALF_OPEN or state is _OPEN):
                if openings is not None:
                    self._openings = openings
                elif state is not _OPEN:
                    self._openings += 1
                duration = self._open_duration(self._openings) if open_for is None else open_for
                self._open_until = now + max(duration, 0.0)
                if state is not _OPEN:
                    self._transition(_OPEN, now, "fleet", events)
            elif to is _CLOSED and (state is _OPEN or state is _HALF_OPEN):
                self._transition(_CLOSED, now, "fleet", events)
        self._publish(events)
        return bool(events)

    # -- manual control --------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until `reset()` (FORCED_OPEN)."""
        self._force(_FORCED_OPEN)

    def reset(self) -> None:
        """Close the breaker with a fresh window and no memory of past openings."""
        self._force(_CLOSED)

    force_closed = reset

    def disable(self) -> None:
        """Admit every call and record nothing (DISABLED), until `reset()`."""
        self._force(_DISABLED)

    def metrics_only(self) -> None:
        """Admit every call and record outcomes, but never open (METRICS_ONLY)."""
        self._force(_METRICS_ONLY)

    # -- reading ---------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state, with a due OPEN -> HALF_OPEN transition applied."""
        state = self._mode[0]
        if state is _OPEN or state is _HALF_OPEN:
            now = self.clock.monotonic()
            events: list[Event] = []
            with self._lock:
                self._advance(now, events)
                state = self._mode[0]
            self._publish(events)
        return state

    @property
    def epoch(self) -> int:
        """Bumped on every state change."""
        return self._mode[1]

    @property
    def failure_rate(self) -> float:
        """Failures / calls in the current window; NaN below `minimum_calls`."""
        return self.metrics().failure_rate

    def retry_after(self) -> float | None:
        """Seconds until an open breaker admits a probe; 0.0 if it admits calls now."""
        state = self.state
        if state is _OPEN:
            return max(self._open_until - self.clock.monotonic(), 0.0)
        if state is _FORCED_OPEN:
            return None
        return 0.0

    def metrics(self) -> BreakerMetrics:
        """A consistent snapshot of the counters (cheap; no per-call cost).

        The window figures are those the state machine decides on: in
        CLOSED and METRICS_ONLY the sliding window; in OPEN the window as it
        was at the trip (outcomes of calls admitted before it never enter);
        in HALF_OPEN the probes' outcomes so far (rates NaN until all
        `half_open_max_calls` are in, as resilience4j reports them).
        """
        now = self.clock.monotonic()
        with self._lock:
            state = self._mode[0]
            if state is _HALF_OPEN:
                calls, failures, slow = self._probe_calls, self._probe_failures, self._probe_slow
                enough = calls >= self.half_open_max_calls
                streak = self._probe_streak
            else:
                window = self._window
                window.refresh(self._recorded(), now)
                calls, failures, slow = window.calls, window.failures, window.slow
                enough = calls >= self.minimum_calls
                streak = self._streak()
            return BreakerMetrics(
                name=self.name,
                state=state,
                calls={
                    "success": peek(self._successes),
                    "failure": self._failures,
                    "ignored": self._ignored,
                    "rejected": peek(self._rejections),
                },
                slow_calls=self._slow_calls,
                transitions=dict(self._transitions),
                failure_rate=failures / calls if enough else math.nan,
                slow_call_rate=slow / calls if enough else math.nan,
                window_calls=calls,
                window_failures=failures,
                window_slow=slow,
                consecutive_failures=streak,
                durations={} if self._durations is None else self._durations.snapshot(),
                openings=self._openings,
            )

    # -- Guard hooks -----------------------------------------------------------

    def _enter(self) -> Permit:
        return self.acquire()

    async def _aenter(self) -> Permit:
        if self._shared_async_grant is None or self._mode[2]:
            return self.acquire()
        return await self._aacquire_slow()

    def _on_error(self, token: Permit, exc: BaseException) -> None:
        if token.settled:  # `with breaker as permit:` settled it by hand, then raised
            return
        try:
            outcome = self._classifier.classify_exception(exc)
        except BaseException:
            self._settle(token, _IGNORED)  # a predicate bug must not leak the permit
            raise
        self._settle(token, outcome)

    def _on_return(self, token: Permit, result: object) -> None:
        if self._classifier.failure_if is None:
            self._settle(token, _SUCCESS)
            return
        try:
            outcome = self._classifier.classify_result(result)
        except BaseException:
            self._settle(token, _IGNORED)
            raise
        self._settle(token, outcome)

    def _on_exit(self, token: Permit) -> None:
        if not token.settled:  # `with breaker as permit:` may have settled it by hand
            self._settle(token, _SUCCESS)

    def _on_misuse(self, token: Permit) -> None:
        if not token.settled:
            self._settle(token, _IGNORED)

    def _misused(self, permit: Permit, fn: object, result: object) -> TypeError:
        """Settle a sync call that returned an awaitable as IGNORED; return the error."""
        self._on_misuse(permit)
        return returned_awaitable(self, fn, result)

    def _settle_result(self, epoch: int, start: float, result: object) -> None:
        """Settle a decorated call that returned, when the lock-free path does not apply."""
        if self._classifier.failure_if is None:
            self._record(epoch, start, False, _SUCCESS)
        else:
            self._on_return(Permit(self, epoch, start, False), result)

    def _wrapper_locals(self) -> tuple[Any, ...]:
        """What the decorator wrappers read per call, bound once at decoration."""
        return (
            self,
            self.clock,
            self._acquire_slow,
            self._on_error,
            self._monotonic,
            self._classifier.failure_if,
            self._needs_time,
            self.slow_call_duration,
            self._successes,
            self.minimum_calls,
        )

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        # acquire() and the permit, inlined for the decorator: no Permit object
        # on the closed-state path, and a success takes no lock (see _CountLog).
        refuse_generators(fn, self)
        (
            breaker,
            clock,
            acquire_slow,
            on_error,
            monotonic,
            failure_if,
            timed,
            slow_after,
            successes,
            warmup,
        ) = self._wrapper_locals()
        plain = PLAIN_TYPES

        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            state, epoch, admits, lockfree = breaker._mode
            if admits:
                start = clock.monotonic() if timed else 0.0
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    on_error(Permit(breaker, epoch, start, False), exc)
                    raise
                if type(result) not in plain and is_awaitable_type(type(result)):
                    raise breaker._misused(Permit(breaker, epoch, start, False), fn, result)
                if (
                    failure_if is None
                    and lockfree is not None
                    and (slow_after is None or clock.monotonic() - start <= slow_after)
                ):
                    next(successes)
                    # A fast success: counted in the window without a lock. It can
                    # only trip the breaker by bringing the window to minimum_calls.
                    if next(lockfree) < warmup:
                        breaker._check_warmup(epoch)
                else:
                    breaker._settle_result(epoch, start, result)
                return result
            if state is _OPEN and (now := monotonic()) < breaker._open_until:
                raise breaker._rejection(state, now)  # raised here: one frame less to unwind
            permit = acquire_slow()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                on_error(permit, exc)
                raise
            if type(result) not in plain and is_awaitable_type(type(result)):
                raise breaker._misused(permit, fn, result)
            breaker._on_return(permit, result)
            return result

        return wrapper

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        (
            breaker,
            clock,
            acquire_slow,
            _,
            monotonic,
            failure_if,
            timed,
            slow_after,
            successes,
            warmup,
        ) = self._wrapper_locals()
        failed, nothing = self._failed, _NOTHING

        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            state, epoch, admits, lockfree = breaker._mode
            if admits:
                permit = None
                start = clock.monotonic() if timed else 0.0
            elif state is _OPEN and (now := monotonic()) < breaker._open_until:
                raise breaker._rejection(state, now)
            elif breaker._shared_async_grant is None:
                permit = acquire_slow()
            else:
                permit = await breaker._aacquire_slow()
            pending: Any = nothing
            try:
                pending = fn(*args, **kwargs)
                result: R = await pending
            except BaseException as exc:
                # A plain value awaited (misuse) learns nothing; anything else is classified.
                failed(permit or Permit(breaker, epoch, start, False), exc, fn, pending)
                raise
            if permit is not None:
                breaker._on_return(permit, result)
            elif (
                failure_if is None
                and lockfree is not None
                and (slow_after is None or clock.monotonic() - start <= slow_after)
            ):
                next(successes)
                if next(lockfree) < warmup:
                    breaker._check_warmup(epoch)
            else:
                breaker._settle_result(epoch, start, result)
            return result

        return wrapper

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} state={self._mode[0]}>"


def _check_open_duration(value: object) -> Callable[[int], float]:
    if callable(value):
        for openings in (1, 2, 3):
            check_seconds(value(openings), f"open_duration({openings})", allow_zero=True)
        return value
    seconds = check_seconds(value, "open_duration")
    return lambda openings: seconds
