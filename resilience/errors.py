"""Errors raised by resilience itself.

```
Exception
└── ResilienceError
    ├── CircuitOpenError            a breaker rejected the call
    ├── BulkheadFullError           no concurrency slot was free in time
    │   └── ConcurrencyLimitExceededError   an adaptive concurrency limit is reached
    ├── RetryBudgetExhaustedError   the retry budget of a downstream is spent
    ├── DeadlineExceededError       also a builtin TimeoutError
    └── MisuseError                 also a builtin TypeError: sync API on async code...
```

Errors raised by a policy are created fresh for each rejection, so their
tracebacks never grow. Every error keeps its attributes in `args`, so it
pickles whole and survives a process pool or a task queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._state import State

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "ConcurrencyLimitExceededError",
    "DeadlineExceededError",
    "MisuseError",
    "ResilienceError",
    "RetryBudgetExhaustedError",
]


class ResilienceError(Exception):
    """Base class of every error that resilience raises on its own account."""


class CircuitOpenError(ResilienceError):
    """A circuit breaker rejected the call without running it.

    `CircuitOpenError(name, state, retry_after)`; the attributes are read from
    `args`, so that raising one (the rejection path) runs no Python `__init__`.

    Attributes:
        name: The breaker's name.
        state: The state that rejected the call (`OPEN`, `HALF_OPEN` with
            every probe slot taken, or `FORCED_OPEN`).
        retry_after: Seconds until the breaker admits a probe again, or
            `None` when no time is known: forced open, or half-open with
            every probe slot taken.
    """

    if TYPE_CHECKING:

        def __init__(self, name: str, state: State, retry_after: float | None) -> None: ...

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def state(self) -> State:
        """The state that rejected the call."""
        return self.args[1]  # type: ignore[no-any-return]

    @property
    def retry_after(self) -> float | None:
        """Seconds until a probe is allowed, or None if unknown."""
        return self.args[2]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        if self.retry_after is None:
            if self.state.value == "half_open":
                return f"circuit breaker {self.name!r} is half_open; every probe slot is taken"
            return f"circuit breaker {self.name!r} is {self.state}; calls are rejected until reset"
        return (
            f"circuit breaker {self.name!r} is {self.state}; "
            f"next probe allowed in {self.retry_after:.3f}s"
        )


class BulkheadFullError(ResilienceError):
    """A bulkhead had no free slot, or none freed up within `max_wait`.

    `BulkheadFullError(name, max_concurrent, waited=0.0)`.

    Attributes:
        name: The bulkhead's name.
        max_concurrent: The bulkhead's concurrency limit.
        waited: Seconds the call waited for a slot before it was rejected.
    """

    if TYPE_CHECKING:

        def __init__(self, name: str, max_concurrent: int, waited: float = 0.0) -> None: ...

    @property
    def name(self) -> str:
        """The bulkhead's name."""
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def max_concurrent(self) -> int:
        """The bulkhead's concurrency limit."""
        return self.args[1]  # type: ignore[no-any-return]

    @property
    def waited(self) -> float:
        """Seconds waited for a slot before the rejection."""
        return self.args[2] if len(self.args) > 2 else 0.0

    def __str__(self) -> str:
        return (
            f"bulkhead {self.name!r} is full ({self.max_concurrent} concurrent calls); "
            f"rejected after waiting {self.waited:.3f}s"
        )


class ConcurrencyLimitExceededError(BulkheadFullError):
    """A `resilience.ConcurrencyLimit` had no free slot, or none freed up within `max_wait`.

    `ConcurrencyLimitExceededError(name, limit, waited=0.0)`. A
    `BulkheadFullError`, so everything that handles a full bulkhead handles
    it too: breakers ignore it (nothing reached the downstream), `Retry`
    retries it only when `on=` names it or `BulkheadFullError`, and the
    server middleware answers 503 with `Retry-After`.

    Attributes:
        name: The limit's name.
        limit: The limit in force when the call was rejected (also
            `max_concurrent`).
        waited: Seconds the call waited for a slot before it was rejected.
    """

    if TYPE_CHECKING:

        def __init__(self, name: str, limit: int, waited: float = 0.0) -> None: ...

    @property
    def limit(self) -> int:
        """The concurrency limit in force at the rejection."""
        return self.args[1]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return (
            f"concurrency limit {self.name!r} reached ({self.limit} concurrent calls); "
            f"rejected after waiting {self.waited:.3f}s"
        )


class RetryBudgetExhaustedError(ResilienceError):
    """The retry budget shared by the callers of a downstream is spent.

    `RetryBudgetExhaustedError(name)`. Retry policies raise the call's own last
    error with a note instead; this error is for code that asks the budget
    directly and has no error of its own.

    Attributes:
        name: The budget's name.
    """

    if TYPE_CHECKING:

        def __init__(self, name: str) -> None: ...

    @property
    def name(self) -> str:
        """The budget's name."""
        return self.args[0]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"retry budget {self.name!r} is exhausted"


class DeadlineExceededError(ResilienceError, TimeoutError):
    """The time allowed for a call ran out.

    It is a builtin `TimeoutError` too, so `except TimeoutError` catches it.

    Attributes:
        name: What ran out of time (a policy name or an operation), or `None`.
        budget: The time that was allowed, in seconds, or `None` if unknown.
        before_call: True when the deadline was already spent before the call
            started: nothing was sent, so it says nothing about the downstream
            (a breaker ignores it by default).
    """

    def __init__(
        self, name: str | None = None, budget: float | None = None, *, before_call: bool = False
    ) -> None:
        # OSError.__init__ would read two positional args as (errno, strerror).
        ResilienceError.__init__(self, name, budget)
        self.name = name
        self.budget = budget
        self.before_call = before_call

    def __reduce__(
        self,
    ) -> tuple[type[DeadlineExceededError], tuple[str | None, float | None], dict[str, object]]:
        return (type(self), (self.name, self.budget), self.__dict__)

    def __str__(self) -> str:
        what = "deadline exceeded" if self.name is None else f"{self.name!r}: deadline exceeded"
        if self.budget is None:
            return what
        return f"{what} (budget {self.budget:.3f}s)"


class MisuseError(ResilienceError, TypeError):
    """A policy was used in a way it cannot honour; the message says what to do instead.

    A sync entry point given a coroutine function (or a call that returns an
    awaitable), an async entry point given a plain function, a sync bulkhead
    that would block a running event loop. It is a builtin `TypeError`, and
    no policy retries it, counts it as a failure, or replaces it with a
    fallback: it is a bug in the calling code, not a downstream's failure.
    """
