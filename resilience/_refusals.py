"""What resilience's own errors escaping a server handler tell its caller (any protocol).

One mapping for the HTTP middleware (504, or 503 with `Retry-After`) and the
gRPC server interceptors (DEADLINE_EXCEEDED, or UNAVAILABLE with
`grpc-retry-pushback-ms`): the deadline ran out, or a policy refused the
call (an open breaker, a full bulkhead or concurrency limit), which a
caller may retry later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

from .errors import BulkheadFullError, CircuitOpenError, DeadlineExceededError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_RETRY_AFTER", "Refusal", "refusal_of"]

#: The longest retry-after answered, in seconds (a day): a breaker open for
#: longer (or for ever) still gets a finite, well-formed answer.
MAX_RETRY_AFTER = 86_400.0


class Refusal(NamedTuple):
    """How a handler's call was refused, protocol-neutral."""

    #: "deadline_exceeded" (the deadline ran out) or "shed" (a policy refused a call).
    outcome: Literal["deadline_exceeded", "shed"]
    #: Seconds until the refusing policy would admit a call again, when it knows
    #: (a breaker's remaining open time), within [0, MAX_RETRY_AFTER]; else None.
    retry_after: float | None = None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The errors in an exception group, nested groups flattened."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def refusal_of(
    exc: BaseException, timed_out: Callable[[BaseException], bool] | None = None
) -> Refusal | None:
    """The refusal `exc` stands for, or None (the caller re-raises it).

    `DeadlineExceededError` (or an exception `timed_out` says the deadline
    cut) is "deadline_exceeded"; `CircuitOpenError` and `BulkheadFullError`
    (`ConcurrencyLimitExceededError` too) are "shed". An exception group
    (a handler that fanned out) is a refusal when every error in it is:
    "deadline_exceeded" if any is, else the first one's.
    """
    if isinstance(exc, BaseExceptionGroup):
        refusals = [refusal_of(leaf, timed_out) for leaf in _leaves(exc)]
        found = [refusal for refusal in refusals if refusal is not None]
        if not refusals or len(found) < len(refusals):
            return None
        return next((r for r in found if r.outcome == "deadline_exceeded"), found[0])
    if isinstance(exc, DeadlineExceededError) or (timed_out is not None and timed_out(exc)):
        return Refusal("deadline_exceeded")
    if isinstance(exc, (CircuitOpenError, BulkheadFullError)):
        seconds = exc.retry_after if isinstance(exc, CircuitOpenError) else None
        if seconds is None or seconds != seconds:  # unknown, or NaN: unknown
            return Refusal("shed")
        return Refusal("shed", min(max(seconds, 0.0), MAX_RETRY_AFTER))
    return None
