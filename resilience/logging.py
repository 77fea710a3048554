"""structlog events for what the policies do (DESIGN section 11): opt-in.

```python
import resilience.logging

resilience.logging.install()  # every policy's events, through structlog
```

Off by default: structlog without configuration prints to stdout, and a
library must never make an application's output noisier, nor configure its
logging. `install()` only subscribes an observer; where the lines go (JSON,
console, stdlib logging) is the application's structlog configuration.
Calling it again logs nothing twice: see `install`.

Event names: `breaker.opened` (warning), `breaker.half_opened`,
`breaker.closed`, `breaker.forced_open`, `breaker.disabled`,
`breaker.metrics_only`, `breaker.threshold_crossed`, `call.rejected` (the
first per open period; the count comes with the next transition),
`retry.scheduled`, `retry.gave_up` (warning), `retry.budget_exhausted`,
`hedge.budget_exhausted`, `bulkhead.rejected`, `limit.rejected`,
`deadline.exceeded` (these five at most once per `throttle` seconds per
name, with a `suppressed` count),
`registry.evicted`, and `limit.changed` when an adaptive concurrency limit
has moved by a factor of `limit_factor` or more since its last line (a
warning when it fell; also at most once per `throttle` seconds per name).
Fields are names, states, numbers and exception type names: never call
arguments, URLs or messages.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

import structlog

from ._state import State
from ._validate import check_seconds
from .events import (
    BreakerEvicted,
    BulkheadRejected,
    CallRejected,
    DeadlineExceeded,
    Event,
    HedgeBudgetExhausted,
    LimitChanged,
    LimitRejected,
    RetryBudgetExhausted,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
    ThresholdCrossed,
    global_hub,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["StructlogObserver", "install"]

_TRANSITION_EVENTS = {
    State.OPEN: ("breaker.opened", "warning"),
    State.HALF_OPEN: ("breaker.half_opened", "info"),
    State.CLOSED: ("breaker.closed", "info"),
    State.FORCED_OPEN: ("breaker.forced_open", "warning"),
    State.DISABLED: ("breaker.disabled", "warning"),
    State.METRICS_ONLY: ("breaker.metrics_only", "info"),
}


class StructlogObserver:
    """An observer (subscribe it to a hub) that turns policy events into structlog events.

    Args:
        logger: A structlog logger; default `structlog.get_logger("resilience")`,
            resolved on each event so that a later `structlog.configure()` applies.
        throttle: Seconds between two lines for the same noisy event and name.
        limit_factor: How far (a factor > 1) a concurrency limit must move
            from the value last logged before `limit.changed` is logged.
    """

    def __init__(
        self, logger: Any = None, *, throttle: float = 10.0, limit_factor: float = 1.5
    ) -> None:
        self._logger = _check_logger(logger)
        self.throttle = check_seconds(throttle, "throttle", allow_zero=True)
        self.limit_factor = _check_factor(limit_factor)
        self._limits: dict[str, int] = {}  # limit name -> the limit last logged (or initial)
        self._lock = threading.Lock()
        self._rejected: dict[str, int] = {}  # breaker name -> rejections this open period
        self._last: dict[tuple[str, str], float] = {}  # (kind, name) -> last logged
        self._suppressed: dict[tuple[str, str], int] = {}

    @property
    def logger(self) -> Any:
        """The logger lines go to."""
        return self._logger if self._logger is not None else structlog.get_logger("resilience")

    def __call__(self, event: Event) -> None:
        """Log `event` (or count it, for a suppressed repeat)."""
        if isinstance(event, StateChanged):
            self._transition(event)
        elif isinstance(event, CallRejected):
            self._rejection(event)
        elif isinstance(event, ThresholdCrossed):
            self.logger.info(
                "breaker.threshold_crossed",
                name=event.name,
                metric=event.metric,
                value=event.value,
                threshold=event.threshold,
            )
        elif isinstance(event, RetryScheduled):
            self.logger.info(
                "retry.scheduled",
                name=event.name,
                attempt=event.attempt,
                delay_seconds=round(event.delay, 6),
                error_type=event.error_type,
                status=event.status,
            )
        elif isinstance(event, RetryGaveUp):
            self.logger.warning(
                "retry.gave_up",
                name=event.name,
                attempts=event.attempts,
                elapsed_seconds=round(event.elapsed, 6),
                reason=event.reason,
                error_type=event.error_type,
            )
        elif isinstance(event, RetryBudgetExhausted):
            self._throttled("retry.budget_exhausted", event.name, "warning")
        elif isinstance(event, HedgeBudgetExhausted):
            self._throttled("hedge.budget_exhausted", event.name, "warning")
        elif isinstance(event, BulkheadRejected):
            self._throttled(
                "bulkhead.rejected",
                event.name,
                "warning",
                max_concurrent=event.max_concurrent,
                waited_seconds=round(event.waited, 6),
            )
        elif isinstance(event, LimitChanged):
            self._limit_changed(event)
        elif isinstance(event, LimitRejected):
            self._throttled(
                "limit.rejected",
                event.name,
                "warning",
                limit=event.limit,
                waited_seconds=round(event.waited, 6),
            )
        elif isinstance(event, DeadlineExceeded):
            self._throttled("deadline.exceeded", event.name, "warning", budget_seconds=event.budget)
        elif isinstance(event, BreakerEvicted):
            level = "info" if event.state is State.CLOSED else "warning"
            getattr(self.logger, level)(
                "registry.evicted", name=event.name, state=event.state.value
            )

    def _transition(self, event: StateChanged) -> None:
        name, level = _TRANSITION_EVENTS[event.to_state]
        with self._lock:
            rejected = self._rejected.pop(event.name, 0)
        fields: dict[str, Any] = {
            "name": event.name,
            "state": event.to_state.value,
            "from_state": event.from_state.value,
            "reason": event.reason,
        }
        if rejected:
            fields["rejected"] = rejected  # calls turned away while it was open
        getattr(self.logger, level)(name, **fields)

    def _rejection(self, event: CallRejected) -> None:
        with self._lock:
            count = self._rejected.get(event.name, 0) + 1
            self._rejected[event.name] = count
        if count == 1:
            self.logger.info(
                "call.rejected",
                name=event.name,
                state=event.state.value,
                retry_after_seconds=event.retry_after,
            )

    def _limit_changed(self, event: LimitChanged) -> None:
        key = ("limit.changed", event.name)
        with self._lock:
            base = self._limits.setdefault(event.name, event.from_limit)
            new = event.to_limit
            if max(new, base) < self.limit_factor * min(new, base):
                return  # a small move: the metrics show it
            now = time.monotonic()
            last = self._last.get(key)
            if last is not None and now - last < self.throttle:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            self._limits[event.name] = new
            suppressed = self._suppressed.pop(key, 0)
        getattr(self.logger, "warning" if new < base else "info")(
            "limit.changed",
            name=event.name,
            from_limit=base,
            to_limit=new,
            in_flight=event.in_flight,
            suppressed=suppressed,
        )

    def _throttled(self, kind: str, name: str, level: str, **fields: Any) -> None:
        key = (kind, name)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.throttle:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        getattr(self.logger, level)(kind, name=name, suppressed=suppressed, **fields)


def _check_factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"limit_factor= must be a number > 1, got {value!r}")
    if not 1 < value < math.inf:
        raise ValueError(f"limit_factor= must be a finite number > 1, got {value!r}")
    return float(value)


def _check_logger(logger: Any) -> Any:
    if logger is not None and not all(
        callable(getattr(logger, level, None)) for level in ("info", "warning")
    ):
        raise TypeError(
            f"logger= must be a structlog (or stdlib-like) logger with info() and warning() "
            f"methods, or None for structlog.get_logger('resilience'), got {logger!r}"
        )
    return logger


class _Installed:
    """What `install()` set up: one hub subscription, and the calls not undone yet."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Installs not undone, oldest first: (key, (logger, throttle, limit_factor),
        # observer). The last one logs.
        self.stack: list[tuple[object, tuple[Any, float, float], StructlogObserver]] = []
        self.unsubscribe: Callable[[], None] | None = None

    def __call__(self, event: Event) -> None:
        try:
            observer = self.stack[-1][2]
        except IndexError:  # the last install was undone just now
            return
        observer(event)


_installed = _Installed()


def install(
    logger: Any = None, *, throttle: float = 10.0, limit_factor: float = 1.5
) -> Callable[[], None]:
    """Log every policy's events through structlog; return the function that undoes this call.

    Idempotent: however often it is called (a re-imported module, a fixture
    per test), every event is logged once, by the most recent call not yet
    undone. A later call with other arguments takes over (its `logger`,
    `throttle` and `limit_factor` apply) until its own undo function is called; then the
    earlier call's settings apply again. Logging stops when every call has
    been undone. Each returned function undoes exactly its own call; calling
    it again is harmless.
    """
    # validates the arguments
    observer = StructlogObserver(logger, throttle=throttle, limit_factor=limit_factor)
    key = object()
    settings = (logger, observer.throttle, observer.limit_factor)
    with _installed.lock:
        stack = _installed.stack
        if stack and stack[-1][1][0] is logger and stack[-1][1][1:] == settings[1:]:
            observer = stack[-1][2]  # same settings: keep its throttling state
        stack.append((key, settings, observer))
        if _installed.unsubscribe is None:
            _installed.unsubscribe = global_hub.subscribe(_installed)

    def uninstall() -> None:
        with _installed.lock:
            stack = _installed.stack
            for index, entry in enumerate(stack):
                if entry[0] is key:
                    del stack[index]
                    break
            else:
                return  # undone already
            if not stack and _installed.unsubscribe is not None:
                _installed.unsubscribe()
                _installed.unsubscribe = None

    return uninstall
