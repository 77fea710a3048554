"""Fallback: answer with something sensible when the call fails."""

from __future__ import annotations

import inspect
import itertools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._awaitable import PLAIN_TYPES, is_awaitable_type
from ._compose import _NOTHING, Policy, is_async_callable, not_awaitable, returned_awaitable
from ._counter import peek
from ._outcome import ExceptionFilter, ExceptionSpec
from ._tracking import track
from ._validate import check_string
from .errors import MisuseError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Fallback"]

P = ParamSpec("P")
R = TypeVar("R")

# How the fallback is used: returned as is, or called with nothing, with the
# failure, or with the failure and then the call's own arguments.
_VALUE: int = 0
_CALL_EMPTY: int = 1
_CALL_FAILURE: int = 2
_CALL_FAILURE_AND_ARGS: int = 3


class Fallback(Policy):
    """Replace a failure with a fallback answer.

    ```python
    @resilience.Fallback(list, on=resilience.CircuitOpenError)  # a fresh [] each time
    def recommendations(user_id: str) -> list[str]: ...

    @resilience.Fallback(lambda exc, sku: cached_price(sku), on=(httpx.TransportError,))
    async def price(sku: str) -> Decimal: ...
    ```

    A callable `fallback` is called, and what it returns is the answer. What
    it is called with is read from its signature, once, at construction:

    - no required positional parameter (`lambda: 0`, `list`, `dict`, `str`,
      a builtin whose signature cannot be read, `def f(exc=None)`): nothing;
    - a required first parameter and nothing else that asks for arguments
      (`lambda exc: ...`, `def f(exc, currency="EUR")`): the exception, or
      the failing result for `on_result`;
    - a required first parameter, then another required positional one or
      `*args`/`**kwargs` (`lambda exc, sku: ...`,
      `lambda exc, *args, **kwargs: ...`): the failure, then the call's own
      positional and keyword arguments, as the guarded function got them.

    A required keyword-only parameter cannot be filled and is refused. An
    `async def` fallback is awaited (it can only guard coroutine functions),
    and in async code an awaitable returned by a sync fallback is awaited too.

    Anything else is returned as is, to every caller: it must be hashable
    (taken as immutable). A list, dict, set or other unhashable value is
    refused with a `TypeError`; pass a factory instead (`Fallback(list)`,
    `Fallback(lambda: {"items": []})`). To answer with a callable itself,
    wrap it: `Fallback(lambda: handler)`.

    Cancellation and other non-`Exception`s are never replaced, nor is an
    exception outside `on`, nor a misuse error (a sync entry point given a
    coroutine function, or the reverse). An exception raised by the fallback
    itself propagates, chained to the original.

    Args:
        fallback: The value, or a callable (see above).
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
        self._mode = _call_mode(fallback)
        self.on = ExceptionFilter(on, param="on")
        if on_result is not None and not callable(on_result):
            raise TypeError(f"on_result= must be callable(result), got {on_result!r}")
        self.on_result = on_result
        self.name = check_string(name, "name")
        self._async_fallback = is_async_callable(fallback)
        self._used: itertools.count[int] = itertools.count()
        track("fallback", self)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call `fn`; on a matching failure return the fallback instead."""
        if self._async_fallback:
            raise self._async_fallback_error(fn)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, MisuseError) or not self.on.matches(exc):
                raise
            return cast(R, self._sync_answer(exc, args, kwargs))
        if type(result) not in PLAIN_TYPES and is_awaitable_type(type(result)):
            raise returned_awaitable(self, fn, result)
        if self.on_result is not None and self.on_result(result):
            return cast(R, self._sync_answer(result, args, kwargs))
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn`; on a matching failure return (or await) the fallback instead."""
        pending: Any = _NOTHING
        try:
            pending = fn(*args, **kwargs)
            result: R = await pending
        except Exception as exc:
            if isinstance(exc, TypeError):
                misuse = not_awaitable(self, fn, pending)
                if misuse is not None:
                    raise misuse from None
            if isinstance(exc, MisuseError) or not self.on.matches(exc):
                raise
            answer = self._answer(exc, args, kwargs)
            # Awaited here, in the except block: an error it raises chains to `exc`.
            return cast(R, await answer if inspect.isawaitable(answer) else answer)
        if self.on_result is None or not self.on_result(result):
            return result
        answer = self._answer(result, args, kwargs)
        return cast(R, await answer if inspect.isawaitable(answer) else answer)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        if self._async_fallback:  # refused at decoration, not at the first failure
            raise self._async_fallback_error(fn)
        return super()._wrap_sync(fn)

    def _async_fallback_error(self, fn: object) -> TypeError:
        return TypeError(
            f"{self!r} has an async fallback; it can only guard async functions, "
            f"not {getattr(fn, '__qualname__', fn)!r}. Give it a sync fallback, "
            f"or make the guarded function `async def`."
        )

    def _answer(self, failure: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        next(self._used)
        mode = self._mode
        if mode == _VALUE:
            return self.fallback
        if mode == _CALL_EMPTY:
            return self.fallback()
        if mode == _CALL_FAILURE:
            return self.fallback(failure)
        return self.fallback(failure, *args, **kwargs)

    def _sync_answer(self, failure: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        answer = self._answer(failure, args, kwargs)
        if inspect.isawaitable(answer):  # a sync fallback that made a coroutine
            raise returned_awaitable(self, self.fallback, answer)
        return answer

    def metrics(self) -> dict[str, int]:
        """How many calls were answered by the fallback."""
        return {"used": peek(self._used)}

    def __repr__(self) -> str:
        return f"Fallback({self.fallback!r}, on={self.on!r})"


def _call_mode(fallback: object) -> int:
    """How to use `fallback`: the rule of the class docstring, decided once."""
    if not callable(fallback):
        try:
            hash(fallback)
        except TypeError:
            kind = type(fallback).__name__
            raise TypeError(
                f"fallback={fallback!r} is a mutable {kind}: every caller would get, and "
                f"could change, the same object. Pass a factory that makes a fresh one per "
                f"fallback instead: `Fallback({kind}, ...)` or `Fallback(lambda: ..., ...)`."
            ) from None
        return _VALUE
    try:
        signature = inspect.signature(fallback)
    except (TypeError, ValueError):
        return _CALL_EMPTY  # builtins without a readable signature: dict, set, str, int
    parameters = list(signature.parameters.values())
    keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only:
        raise TypeError(
            f"fallback={fallback!r} has required keyword-only parameters {keyword_only}, "
            f"which a fallback cannot fill: it is called with nothing, with the failure, "
            f"or with the failure and the call's arguments"
        )
    first = parameters[0] if parameters else None
    if (
        first is None
        or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
        or first.default is not first.empty
    ):
        return _CALL_EMPTY
    rest = parameters[1:]
    takes_args = any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        or (p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
        for p in rest
    )
    return _CALL_FAILURE_AND_ARGS if takes_args else _CALL_FAILURE
