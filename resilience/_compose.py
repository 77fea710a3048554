"""The machinery every policy shares: decorators, context managers, pipelines.

A policy implements two methods, `call` (sync) and `acall` (async); this
module turns them into a decorator that works on sync functions, coroutine
functions, methods, classmethods and staticmethods, and keeps the wrapped
signature for type checkers (ParamSpec). A policy that guards a block of code
(a breaker, a bulkhead) subclasses `Guard` and gets `with` / `async with` too.
"""

from __future__ import annotations

import abc
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeAlias, TypeVar, cast, overload

from ._awaitable import PLAIN_TYPES, is_awaitable_type
from .errors import MisuseError

if TYPE_CHECKING:
    from types import FrameType, TracebackType

__all__ = [
    "Guard",
    "MisuseError",
    "Pipeline",
    "Policy",
    "compose",
    "not_awaitable",
    "returned_awaitable",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Token = TypeVar("Token")


class Policy(abc.ABC):
    """A resilience policy: something that runs a call on the caller's behalf.

    Subclasses implement `call` and `acall`. An instance is then a decorator
    for sync and async callables:

    ```python
    @policy
    def charge(order_id: str) -> Receipt: ...

    @policy
    async def fetch(url: str) -> bytes: ...
    ```

    Decorating a generator or async generator function raises `TypeError`:
    the policy would only see the generator being created, not its work.
    """

    __slots__ = ()

    @abc.abstractmethod
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` under this policy and return its result."""

    @abc.abstractmethod
    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)` under this policy and return its result."""

    @overload
    def __call__(self, fn: classmethod[T, P, R]) -> classmethod[T, P, R]: ...
    @overload
    def __call__(self, fn: staticmethod[P, R]) -> staticmethod[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Any) -> Any:
        """Decorate `fn`, choosing the sync or async wrapper by what `fn` is."""
        if isinstance(fn, (classmethod, staticmethod)):
            return type(fn)(self(fn.__func__))
        if not callable(fn):
            raise TypeError(f"{type(self).__name__} decorates callables, got {fn!r}")
        wrapper = self._wrap_async(fn) if is_async_callable(fn) else self._wrap_sync(fn)
        functools.update_wrapper(wrapper, fn)
        return wrapper

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Return a sync wrapper that runs `fn` through `call`."""
        refuse_generators(fn, self)
        call = self.call

        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return call(fn, *args, **kwargs)

        return wrapper

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Return a coroutine function that awaits `fn` through `acall`."""
        acall = self.acall

        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return await acall(fn, *args, **kwargs)

        return wrapper


# Stands for "the callable has not returned yet" in the async entry points: a
# TypeError raised while this is still the pending value came from the call itself.
_NOTHING: Any = object()


def is_async_callable(fn: object) -> bool:
    """Return whether calling `fn` returns a coroutine, as far as can be known.

    Sees through `functools.partial`, bound methods, and objects whose
    `__call__` is a coroutine function.
    """
    import inspect

    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return False
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def returned_awaitable(policy: object, fn: object, result: object) -> MisuseError:
    """The error for a sync entry point whose call returned an awaitable.

    A sync policy cannot see how a coroutine (or future) ends: counting it as
    a success would hide every failure it later raises. A coroutine that was
    never started is closed, so no "never awaited" warning follows the error.
    Call sites test `type(result) not in PLAIN_TYPES and is_awaitable_type(type(result))`
    first (one set lookup for the usual types), and build this error only on misuse.
    """
    close = getattr(result, "close", None)
    if type(result).__name__ == "coroutine" and close is not None:
        close()
    kind = type(policy).__name__
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return MisuseError(
        f"{kind}: {name} returned an awaitable ({type(result).__name__}) to a sync entry point, "
        f"which cannot see how it ends. Await it through the async API instead: "
        f"`await policy.acall(fn, ...)`, `async with policy:`, or decorate the "
        f"coroutine function itself (`@policy` on an `async def`)."
    )


def not_awaitable(policy: object, fn: object, pending: object) -> MisuseError | None:
    """The error for an async entry point whose call returned a plain value, or None.

    Call sites keep the call's return value in `pending` (initially `_NOTHING`)
    and, only when `await pending` raised a TypeError, ask this whether the
    value was not awaitable at all: the success path pays nothing. None means
    the TypeError is the call's own (raised by the function or the coroutine).
    """
    import inspect

    # inspect.isawaitable also knows generator-based coroutines (@types.coroutine).
    if pending is _NOTHING or inspect.isawaitable(pending):
        return None
    kind = type(policy).__name__
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return MisuseError(
        f"{kind}: {name} returned {type(pending).__name__}, not an awaitable, to an async "
        f"entry point: it ran as a plain function and its result was dropped. Run sync "
        f"functions through the sync API instead: `policy.call(fn, ...)`, `with policy:`, "
        f"or decorate the plain function (`@policy` on a `def`)."
    )


def refuse_generators(fn: object, policy: Policy) -> None:
    import inspect

    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{type(policy).__name__} cannot wrap the generator function {fn!r}: "
            f"it would see the generator being created, not the work done while it is "
            f"iterated. Wrap a function that does the whole call instead."
        )


# One entered `with guard:` block: (guard, token, caller frame, enclosing block).
# A plain tuple, because entering a block is on the hot path.
_Block: TypeAlias = "tuple[Guard[Any], object, FrameType, _Block | None]"

# The blocks entered in the current thread or task, innermost first. Context-local,
# so that one guard object can be entered by many threads and tasks at once.
_entered: ContextVar[_Block | None] = ContextVar("resilience_entered_blocks", default=None)

# Every open block, by (guard, entering frame): the way back to a token when a
# block ends in another context than the one it began in.
_open_by_frame: dict[tuple[int, int], list[tuple[FrameType, object]]] = {}


def _forget(guard: Guard[Any], block: _Block) -> None:
    key = (id(guard), id(block[2]))
    entries = _open_by_frame.get(key)
    if entries is None:
        return
    for index in range(len(entries) - 1, -1, -1):
        if entries[index][1] is block[1]:
            del entries[index]
            break
    if not entries:
        _open_by_frame.pop(key, None)


class Guard(Policy, Generic[Token]):
    """A policy that admits a call, then learns how it ended.

    Subclasses implement `_enter` (admit, or raise to reject; returns a token
    such as a permit) and `_on_error` / `_on_return` / `_on_exit` (settle the
    token), and may override `_on_misuse` (a call that says nothing about the
    downstream: the wrong entry point, see `resilience.MisuseError`). Exactly
    one settle method runs per admitted call, whatever the call does,
    including cancellation and KeyboardInterrupt. The settle methods must not
    block and must settle the token even if they fail part-way.

    `with guard as token:` and `async with guard as token:` work from any
    number of threads and tasks at once: the token is kept per context.
    """

    __slots__ = ()

    @abc.abstractmethod
    def _enter(self) -> Token:
        """Admit one call, or raise to reject it."""

    async def _aenter(self) -> Token:
        """Admit one call from async code; override if admission may wait."""
        return self._enter()

    def _enter_may_wait(self) -> bool:
        """Whether `_aenter` is overridden; if not, async callers skip a coroutine."""
        return type(self)._aenter is not Guard._aenter

    @abc.abstractmethod
    def _on_error(self, token: Token, exc: BaseException) -> None:
        """Settle a call that raised `exc` (which will then propagate)."""

    @abc.abstractmethod
    def _on_exit(self, token: Token) -> None:
        """Settle a block that ended normally (no result to look at)."""

    def _on_return(self, token: Token, result: object) -> None:
        """Settle a call that returned `result`; defaults to `_on_exit`."""
        self._on_exit(token)

    def _on_misuse(self, token: Token) -> None:
        """Settle a call that says nothing about the downstream; defaults to `_on_exit`.

        That is a misuse (`resilience.MisuseError`): an awaitable returned to a
        sync entry point, a plain value to an async one, or a misuse error
        raised by a policy nested inside this one.
        """
        self._on_exit(token)

    def _raised(self, token: Token, exc: BaseException) -> None:
        """Settle a call that raised: a misuse error (also from a nested policy) learns nothing."""
        if isinstance(exc, MisuseError):
            self._on_misuse(token)
        else:
            self._on_error(token, exc)

    def _failed(self, token: Token, exc: BaseException, fn: object, pending: object) -> None:
        """Settle an async call that raised; raise the misuse error for a plain value."""
        if isinstance(exc, TypeError):
            misuse = not_awaitable(self, fn, pending)
            if misuse is not None:
                self._on_misuse(token)
                raise misuse from None
        self._raised(token, exc)

    def _returned(self, token: Token, fn: object, result: object) -> None:
        """Settle a sync call that returned `result`; an awaitable is misuse."""
        if type(result) not in PLAIN_TYPES and is_awaitable_type(type(result)):
            self._on_misuse(token)
            raise returned_awaitable(self, fn, result)
        self._on_return(token, result)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` inside this guard."""
        token = self._enter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._raised(token, exc)
            raise
        self._returned(token, fn, result)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)` inside this guard."""
        token = await self._aenter() if self._enter_may_wait() else self._enter()
        pending: Any = _NOTHING
        try:
            pending = fn(*args, **kwargs)
            result: R = await pending
        except BaseException as exc:
            self._failed(token, exc, fn, pending)
            raise
        self._on_return(token, result)
        return result

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        # The body of `call`, inlined: one Python frame less per decorated call.
        refuse_generators(fn, self)
        enter, raised, returned = self._enter, self._raised, self._returned
        on_return, plain = self._on_return, PLAIN_TYPES

        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            token = enter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                raised(token, exc)
                raise
            if type(result) in plain:
                on_return(token, result)
            else:
                returned(token, fn, result)  # may be an awaitable: misuse
            return result

        return wrapper

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        # The body of `acall`, inlined: one coroutine less per decorated call.
        enter, aenter = self._enter, self._aenter
        failed, on_return = self._failed, self._on_return
        enter_may_wait = self._enter_may_wait()
        nothing = _NOTHING

        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            token = await aenter() if enter_may_wait else enter()
            pending: Any = nothing
            try:
                pending = fn(*args, **kwargs)
                result: R = await pending
            except BaseException as exc:
                # A plain value (a sync function) fails the await: misuse, checked only here.
                failed(token, exc, fn, pending)
                raise
            on_return(token, result)
            return result

        return wrapper

    def __enter__(self) -> Token:
        token = self._enter()
        self._push_block(token, sys._getframe(1))
        return token

    async def __aenter__(self) -> Token:
        token = await self._aenter()
        self._push_block(token, sys._getframe(1))
        return token

    def _push_block(self, token: Token, caller: FrameType) -> None:
        _entered.set((self, token, caller, _entered.get()))
        # Also by frame, for a block that ends in another thread or task (a
        # generator closed elsewhere): its token must still be settled.
        _open_by_frame.setdefault((id(self), id(caller)), []).append((caller, token))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exit_block(sys._getframe(1), exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exit_block(sys._getframe(1), exc)

    def _exit_block(self, caller: FrameType, exc: BaseException | None) -> None:
        token = self._pop_token(caller)
        if exc is None:
            self._on_exit(token)
        else:
            self._raised(token, exc)

    def _pop_token(self, caller: FrameType) -> Token:
        """Remove the block this exit belongs to and return its token.

        That is the block of this guard entered from the same frame (two
        generators can hold blocks of one guard and close in any order), or
        else the innermost block of this guard (`contextlib.ExitStack` enters
        and exits from different frames, but in reverse order).
        """
        block = _entered.get()
        if block is not None and block[0] is self and block[2] is caller:
            _entered.set(block[3])  # the common case: the innermost block is ours
            _forget(self, block)
            return cast(Token, block[1])
        above: list[_Block] = []
        fallback: _Block | None = None
        while block is not None:
            if block[0] is self:
                if block[2] is caller:
                    break
                fallback = fallback or block
            above.append(block)
            block = block[3]
        else:
            if fallback is None:
                elsewhere = _open_by_frame.get((id(self), id(caller)))
                if elsewhere:  # entered by this frame in another thread or task
                    _, token = elsewhere.pop()
                    if not elsewhere:
                        del _open_by_frame[(id(self), id(caller))]
                    return cast(Token, token)
                raise RuntimeError(
                    f"{type(self).__name__}.__exit__ without a matching __enter__ in this "
                    f"thread or task: a `with` block must end where it began"
                )
            block = fallback
            above = above[: above.index(fallback)]
        rest = block[3]
        for guard, token, frame, _ in reversed(above):
            rest = (guard, token, frame, rest)
        _entered.set(rest)
        _forget(self, block)
        return cast(Token, block[1])


class Pipeline(Policy):
    """Policies applied in order, the first outermost: see `compose`."""

    __slots__ = ("policies",)

    def __init__(self, *policies: Policy) -> None:
        flat: list[Policy] = []
        for index, policy in enumerate(policies):
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, Policy):
                flat.append(policy)
            else:
                raise TypeError(
                    f"compose() takes resilience policies; argument {index} is {policy!r}"
                )
        self.policies: tuple[Policy, ...] = tuple(flat)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` through every policy, outermost first.

        An awaitable coming back is a `TypeError` (also when a policy of the
        pipeline does not check for it itself): use `acall` for async code.
        """
        result = self._wrap_sync(fn)(*args, **kwargs) if self.policies else fn(*args, **kwargs)
        if type(result) not in PLAIN_TYPES and is_awaitable_type(type(result)):
            raise returned_awaitable(self, fn, result)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)` through every policy, outermost first."""
        if self.policies:
            return await self._wrap_async(fn)(*args, **kwargs)
        pending: Any = _NOTHING
        try:
            pending = fn(*args, **kwargs)
            result: R = await pending
        except TypeError:
            misuse = not_awaitable(self, fn, pending)
            if misuse is not None:
                raise misuse from None
            raise
        return result

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        if not self.policies:
            return super()._wrap_sync(fn)
        for policy in reversed(self.policies):
            fn = policy._wrap_sync(fn)
        return fn

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not self.policies:
            return super()._wrap_async(fn)
        wrapped: Callable[P, Awaitable[R]] = fn
        for policy in reversed(self.policies):
            wrapped = policy._wrap_async(wrapped)
        return cast(Callable[P, Coroutine[Any, Any, R]], wrapped)

    def __repr__(self) -> str:
        return f"compose({', '.join(map(repr, self.policies))})"


def compose(*policies: Policy) -> Pipeline:
    """Combine policies into one; the first is outermost.

    `compose(a, b, c)(f)` is `a(b(c(f)))`. The recommended order, outermost
    first, is: total deadline, retry (with its budget), circuit breaker,
    bulkhead, attempt timeout. Nested pipelines are flattened; an empty
    pipeline runs the call unchanged.
    """
    return Pipeline(*policies)
