"""Outcome classification: is a finished call a success, a failure, or neither?

The rules (DESIGN section 4):

- a returned value is a SUCCESS, unless `failure_if(value)` is true;
- a `BaseException` that is not an `Exception` (cancellation,
  KeyboardInterrupt, SystemExit, GeneratorExit) is IGNORED, always;
- an exception matching `ignore=` is IGNORED, even when `record=` matches too;
- the library's own rejections (`CircuitOpenError`, `BulkheadFullError`,
  `RetryBudgetExhaustedError`, a `DeadlineExceededError` whose deadline
  was spent before the call started, and `MisuseError`) are IGNORED: nothing
  reached the downstream. Naming one of their classes in `record=` counts it
  again, except `MisuseError` (a bug in the calling code, never a failure);
- an exception matching `record=` is a FAILURE;
- any other exception is IGNORED: it says nothing about the downstream's
  health, and counting it as a success would reset failure counts by accident.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TypeAlias

from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    MisuseError,
    ResilienceError,
    RetryBudgetExhaustedError,
)

__all__ = [
    "Classifier",
    "ExceptionFilter",
    "ExceptionSpec",
    "Outcome",
    "ResultPredicate",
    "is_rejection",
]


class Outcome(enum.Enum):
    """What a finished call tells a policy about the downstream."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"

    def __str__(self) -> str:
        return self.value


ExceptionPredicate: TypeAlias = Callable[[BaseException], object]
#: Exception types, predicates on the exception, or an iterable mixing both.
ExceptionSpec: TypeAlias = (
    type[BaseException] | ExceptionPredicate | Iterable[type[BaseException] | ExceptionPredicate]
)
ResultPredicate: TypeAlias = Callable[[object], object]


class ExceptionFilter:
    """Matches an exception against types (isinstance) and predicates (truthy result).

    Built once at construction from a user's spec; `param` names the argument
    in error messages.
    """

    __slots__ = ("predicates", "types")

    def __init__(self, spec: ExceptionSpec, *, param: str) -> None:
        types: list[type[BaseException]] = []
        predicates: list[ExceptionPredicate] = []
        items = [spec] if isinstance(spec, type) or callable(spec) else _iterate(spec, param)
        for item in items:
            if isinstance(item, type):
                types.append(_check_exception_type(item, param))
            elif callable(item):
                predicates.append(item)
            else:
                raise TypeError(
                    f"{param}= takes exception types or predicates "
                    f"(callable(exc) -> bool), got {item!r}"
                )
        self.types = tuple(types)
        self.predicates = tuple(predicates)

    def matches(self, exc: BaseException) -> bool:
        """Return whether `exc` is one of the types or satisfies a predicate."""
        if self.types and isinstance(exc, self.types):
            return True
        return any(predicate(exc) for predicate in self.predicates)

    def __bool__(self) -> bool:
        return bool(self.types or self.predicates)

    def __repr__(self) -> str:
        names = [t.__name__ for t in self.types] + [repr(p) for p in self.predicates]
        return f"ExceptionFilter({', '.join(names)})"


def _iterate(spec: object, param: str) -> list[object]:
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Iterable):
        raise TypeError(
            f"{param}= takes an exception type, a predicate, or a tuple of them; got {spec!r}"
        )
    return list(spec)


def _check_exception_type(item: type, param: str) -> type[BaseException]:
    if not issubclass(item, BaseException):
        raise TypeError(f"{param}= takes exception types; {item.__name__} is not an exception")
    if not issubclass(item, Exception):
        raise ValueError(
            f"{param}= cannot name {item.__name__}: it is a BaseException but not an "
            f"Exception (like cancellation or KeyboardInterrupt), and those are always "
            f"ignored and re-raised untouched"
        )
    return item


class Classifier:
    """Turns the end of a call (a result or an exception) into an `Outcome`.

    Args:
        record: Exceptions that count as failures (default: every `Exception`).
        ignore: Exceptions that count as nothing; wins over `record`.
        failure_if: A predicate on a returned value that makes it a failure
            (for example an HTTP 503 response).
    """

    __slots__ = ("failure_if", "ignore", "record")

    def __init__(
        self,
        *,
        record: ExceptionSpec = (Exception,),
        ignore: ExceptionSpec = (),
        failure_if: ResultPredicate | None = None,
    ) -> None:
        self.record = ExceptionFilter(record, param="record")
        self.ignore = ExceptionFilter(ignore, param="ignore")
        if failure_if is not None and not callable(failure_if):
            raise TypeError(f"failure_if= must be a callable(result) -> bool, got {failure_if!r}")
        self.failure_if = failure_if

    def classify_exception(self, exc: BaseException) -> Outcome:
        """Classify a call that raised `exc`."""
        if not isinstance(exc, Exception) or self.ignore.matches(exc):
            return Outcome.IGNORED
        if is_rejection(exc) and (isinstance(exc, MisuseError) or not self._names_rejection(exc)):
            return Outcome.IGNORED
        if self.record.matches(exc):
            return Outcome.FAILURE
        return Outcome.IGNORED

    def _names_rejection(self, exc: Exception) -> bool:
        """Whether `record=` names a resilience error class that `exc` is an instance of."""
        return any(
            issubclass(kind, ResilienceError) and isinstance(exc, kind)
            for kind in self.record.types
        )

    def classify_result(self, result: object) -> Outcome:
        """Classify a call that returned `result`."""
        if self.failure_if is not None and self.failure_if(result):
            return Outcome.FAILURE
        return Outcome.SUCCESS


_REJECTIONS = (CircuitOpenError, BulkheadFullError, RetryBudgetExhaustedError, MisuseError)


def is_rejection(exc: BaseException) -> bool:
    """Whether `exc` is the library refusing a call it never started.

    A breaker, bulkhead or budget that said no, a deadline already spent
    before the call began, or a policy refusing misuse (`MisuseError`): none
    of them says anything about the downstream.
    """
    if isinstance(exc, _REJECTIONS):
        return True
    return isinstance(exc, DeadlineExceededError) and exc.before_call
