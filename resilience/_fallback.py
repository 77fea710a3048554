"""Fallback: answer with something sensible when the call fails."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._compose import Policy, is_async_callable
from ._counter import peek
from ._outcome import ExceptionFilter, ExceptionSpec
from ._validate import check_string

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Fallback"]

P = ParamSpec("P")
R = TypeVar("R")


class Fallback(Policy):
    """Replace a failure with a fallback answer.

    ```python
    @resilience.Fallback([], on=resilience.CircuitOpenError)
    def recommendations(user_id: str) -> list[str]: ...

    @resilience.Fallback(lambda exc: cached_price(), on=(httpx.TransportError,))
    async def price(sku: str) -> Decimal: ...
    ```

    If `fallback` is callable it is called with the exception (or with the
    failing result, for `on_result`) and its return value is the answer; an
    async callable is awaited (for coroutine functions only). Anything else is
    returned as is. Cancellation and other non-`Exception`s are never
    replaced, and neither is an exception outside `on`. An exception raised
    by the fallback itself propagates, chained to the original.

    Args:
        fallback: The value, or `callable(exception_or_result)`.
        on: Exceptions to replace (required: types, predicates, or a tuple).
        on_result: Predicate on a returned value that asks for the fallback.
        name: Names the policy in metrics.
    """

    def __init__(
        self,
        fallback: Any,
        *,
        on: ExceptionSpec,
        on_result: Callable[[Any], object] | None = None,
        name: str = "fallback",
    ) -> None:
        self.fallback = fallback
        self.on = ExceptionFilter(on, param="on")
        if on_result is not None and not callable(on_result):
            raise TypeError(f"on_result= must be callable(result), got {on_result!r}")
        self.on_result = on_result
        self.name = check_string(name, "name")
        self._async_fallback = is_async_callable(fallback)
        self._used: itertools.count[int] = itertools.count()

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call `fn`; on a matching failure return the fallback instead."""
        if self._async_fallback:
            raise TypeError(f"{self!r} has an async fallback; it can only guard async functions")
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not self.on.matches(exc):
                raise
            return cast(R, self._answer(exc))
        if self.on_result is not None and self.on_result(result):
            return cast(R, self._answer(result))
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn`; on a matching failure return (or await) the fallback instead."""
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self.on.matches(exc):
                raise
            answer = self._answer(exc)
            # Awaited here, in the except block: an error it raises chains to `exc`.
            return cast(R, await answer if self._async_fallback else answer)
        if self.on_result is None or not self.on_result(result):
            return result
        answer = self._answer(result)
        return cast(R, await answer if self._async_fallback else answer)

    def _answer(self, failure: object) -> Any:
        next(self._used)
        return self.fallback(failure) if callable(self.fallback) else self.fallback

    def metrics(self) -> dict[str, int]:
        """How many calls were answered by the fallback."""
        return {"used": peek(self._used)}

    def __repr__(self) -> str:
        return f"Fallback({self.fallback!r}, on={self.on!r})"
