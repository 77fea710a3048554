from __future__ import annotations

import functools
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience import CircuitBreaker, CircuitOpenError, Fallback


class Down(Exception):
    pass


def test_value_fallback_on_matching_exceptions() -> None:
    """A matching exception is replaced by the value; others propagate."""
    fallback = Fallback((), on=Down)

    @fallback
    def recommendations(fail_with: type[Exception] | None) -> list[str]:
        if fail_with:
            raise fail_with
        return ["a"]

    assert recommendations(None) == ["a"]
    assert recommendations(Down) == ()
    with pytest.raises(KeyError):
        recommendations(KeyError)
    assert fallback.metrics() == {"used": 1}


def test_callable_fallback_gets_the_failure() -> None:
    """A callable fallback is called with the exception, or the failing result."""
    by_error = Fallback(lambda exc: f"cached ({type(exc).__name__})", on=Down)
    assert by_error.call(_raise, Down()) == "cached (Down)"
    by_result = Fallback(lambda status: 200, on=(), on_result=lambda status: status >= 500)
    assert by_result.call(lambda: 503) == 200
    assert by_result.call(lambda: 404) == 404


def test_open_breaker_falls_back() -> None:
    """The classic pairing: a fallback answers while the breaker is open."""
    breaker = CircuitBreaker("prices", consecutive_failures=1)
    breaker.force_open()
    price = Fallback(0, on=CircuitOpenError)(breaker(lambda: 42))
    assert price() == 0


def test_cancellation_and_interrupts_never_fall_back() -> None:
    """Non-Exception errors pass through even with a catch-all predicate."""
    fallback = Fallback("x", on=lambda exc: True)
    with pytest.raises(KeyboardInterrupt):
        fallback.call(_raise, KeyboardInterrupt())


def test_a_failing_fallback_chains_to_the_original() -> None:
    """If the fallback raises, its error propagates with the original as context."""

    def broken(exc: BaseException) -> str:
        raise RuntimeError("fallback broke")

    with pytest.raises(RuntimeError, match="fallback broke") as caught:
        Fallback(broken, on=Down).call(_raise, Down())
    assert isinstance(caught.value.__context__, Down)


@pytest.mark.anyio
async def test_async_fallbacks() -> None:
    """Coroutine functions get plain and awaited fallbacks."""

    async def cached(exc: BaseException) -> str:
        await anyio.lowlevel.checkpoint()
        return "cached"

    @Fallback(cached, on=Down)
    async def fetch() -> str:
        raise Down

    @Fallback("plain", on=Down)
    async def fetch_plain() -> str:
        raise Down

    assert await fetch() == "cached"
    assert await fetch_plain() == "plain"


def test_async_fallback_cannot_guard_sync_code() -> None:
    """An async fallback on a sync function is a clear error, not an unawaited coroutine."""

    async def cached(exc: BaseException) -> str:
        return "cached"

    with pytest.raises(TypeError, match="async fallback"):
        Fallback(cached, on=Down).call(lambda: 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"on": None}, TypeError, "on="),
        ({"on": 3}, TypeError, "on="),
        ({"on": Down, "on_result": 3}, TypeError, "on_result="),
        ({"on": Down, "on_result": True}, TypeError, "on_result="),
        ({"on": Down, "name": ""}, ValueError, "name="),
        ({"on": Down, "name": 1}, TypeError, "name="),
        ({"on": Down, "fallback": []}, TypeError, "fallback="),
        ({"on": Down, "fallback": {}}, TypeError, "fallback="),
        ({"on": Down, "fallback": set()}, TypeError, "fallback="),
        ({"on": Down, "fallback": bytearray()}, TypeError, "fallback="),
        ({"on": Down, "fallback": ([],)}, TypeError, "fallback="),
        ({"on": Down, "fallback": lambda *, exc: exc}, TypeError, "fallback="),
    ],
)
def test_bad_fallbacks(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Every argument is validated at construction; the message names the parameter."""
    kwargs = {"fallback": None, **kwargs}
    with pytest.raises(error, match=match):
        Fallback(**kwargs)


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.anyio
async def test_a_failing_async_fallback_chains_to_the_original() -> None:
    """An async fallback that raises chains its error to the original failure."""

    async def broken(exc: BaseException) -> str:
        raise RuntimeError("fallback broke")

    @Fallback(broken, on=Down)
    async def fetch() -> str:
        raise Down

    with pytest.raises(RuntimeError, match="fallback broke") as caught:
        await fetch()
    assert isinstance(caught.value.__context__, Down)


# -- what a fallback is called with -------------------------------------------


def test_a_mutable_value_is_refused_with_a_hint_to_pass_a_factory() -> None:
    """Fallback([]) would hand every caller one shared list: refused, naming the fix."""
    with pytest.raises(TypeError, match=r"fallback=.*Fallback\(list"):
        Fallback([], on=Down)
    with pytest.raises(TypeError, match=r"lambda: "):
        Fallback({"a": 1}, on=Down)


def test_a_factory_makes_a_fresh_value_per_fallback() -> None:
    """Fallback(list): each caller gets its own empty list (list(exc) is never called)."""
    fallback = Fallback(list, on=Down)
    first, second = fallback.call(_raise, Down()), fallback.call(_raise, Down())
    assert first == second == []
    assert first is not second


class Cache:
    def __init__(self) -> None:
        self.prices = {"sku-1": 9}

    def price(self, exc: BaseException, sku: str) -> int:
        return self.prices[sku]

    def stale(self) -> str:
        return "stale"


def _failure_and_args(exc: BaseException, *args: object, **kwargs: object) -> tuple[Any, ...]:
    return (type(exc).__name__, args, kwargs)


def _tagged(tag: str, exc: BaseException) -> str:
    return f"{tag}:{type(exc).__name__}"


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [
        (list, []),
        (dict, {}),
        (set, set()),
        (str, ""),
        (tuple, ()),
        (int, 0),
        (lambda: "x", "x"),
        (lambda: len, len),  # to answer with a callable, wrap it
        (lambda exc: type(exc).__name__, "Down"),
        (lambda exc=None: exc, None),  # an optional first parameter gets nothing
        (lambda *args: args, ()),  # no required parameter: called with nothing
        (_failure_and_args, ("Down", ("sku-1",), {"qty": 2})),
        (lambda exc, *args, **kwargs: (args, kwargs), (("sku-1",), {"qty": 2})),
        (functools.partial(_tagged, "partial"), "partial:Down"),
        (lambda exc, currency="EUR": currency, "EUR"),  # a defaulted extra: the failure only
        (functools.partial(lambda exc, sku: sku, sku="bound"), "bound"),  # bound by keyword
        (Cache().stale, "stale"),
        (None, None),
        (0, 0),
        ("cached", "cached"),
        (frozenset({1}), frozenset({1})),
    ],
    ids=lambda value: getattr(value, "__name__", None) or repr(value)[:30],
)
def test_a_callable_fallback_gets_what_its_signature_asks_for(
    fallback: Any, expected: object
) -> None:
    """No parameters: nothing; one: the failure; more: the failure, then the call's arguments."""

    def price(sku: str, *, qty: int) -> int:
        raise Down("boom")  # str(exc) would be "boom": str is called with nothing

    assert Fallback(fallback, on=Down)(price)("sku-1", qty=2) == expected


def test_a_bound_method_gets_the_failure_and_the_calls_arguments() -> None:
    """`cache.price(exc, sku)` answers from the call's own argument."""

    @Fallback(Cache().price, on=Down)
    def price(sku: str) -> int:
        raise Down

    assert price("sku-1") == 9


def test_on_result_fallbacks_get_the_failing_result() -> None:
    """With on_result, the failing result takes the place of the exception."""
    by_result = Fallback(
        lambda response, path: f"stale {path} ({response})",
        on=(),
        on_result=lambda status: status >= 500,
    )
    assert by_result.call(lambda path: 503, "/a") == "stale /a (503)"
    assert Fallback(list, on=(), on_result=lambda r: r is None).call(lambda: None) == []


@pytest.mark.anyio
async def test_async_fallbacks_follow_the_same_rule() -> None:
    """An async def fallback is called by the same rule, and awaited."""

    async def cached(exc: BaseException, sku: str) -> str:
        await anyio.lowlevel.checkpoint()
        return f"cached {sku}"

    async def no_args() -> str:
        return "nothing"

    @Fallback(cached, on=Down)
    async def price(sku: str) -> str:
        raise Down

    @Fallback(no_args, on=Down)
    async def other() -> str:
        raise Down

    assert await price("sku-1") == "cached sku-1"
    assert await other() == "nothing"


@pytest.mark.anyio
async def test_a_sync_fallback_returning_an_awaitable_is_awaited_in_async_code() -> None:
    """`lambda exc: cached_price()` with an async cached_price: awaited, not handed back."""

    async def cached_price() -> int:
        return 7

    @Fallback(lambda exc: cached_price(), on=Down)
    async def price() -> int:
        raise Down

    assert await price() == 7


def test_a_sync_fallback_returning_an_awaitable_in_sync_code_is_an_error() -> None:
    """In sync code the coroutine could never run: TypeError instead of a coroutine answer."""

    async def cached_price() -> int:
        return 7

    with pytest.raises(TypeError, match="returned an awaitable"):
        Fallback(lambda exc: cached_price(), on=Down).call(_raise, Down())


def test_an_async_fallback_on_a_sync_function_fails_at_decoration() -> None:
    """Decorating a def with an async fallback is refused at once, not at the first failure."""

    async def cached(exc: BaseException) -> str:
        return "cached"

    with pytest.raises(TypeError, match="async fallback"):

        @Fallback(cached, on=Down)
        def price() -> str:
            return "fresh"


# -- misuse -------------------------------------------------------------------


async def _coroutine_function() -> str:
    return "never awaited by a sync entry point"


def test_sync_entry_points_refuse_a_coroutine() -> None:
    """Fallback.call given a coroutine function: TypeError, never replaced by the fallback."""
    fallback = Fallback("fallback", on=lambda exc: True)
    with pytest.raises(TypeError, match="returned an awaitable"):
        fallback.call(_coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned an awaitable"):
        fallback(lambda: _coroutine_function())()
    assert fallback.metrics() == {"used": 0}


@pytest.mark.anyio
async def test_async_entry_points_refuse_a_plain_value() -> None:
    """Fallback.acall given a sync function: TypeError pointing at call(), not the fallback."""
    fallback = Fallback("fallback", on=lambda exc: True)
    with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
        await fallback.acall(lambda: 3)  # type: ignore[arg-type,return-value]
    assert fallback.metrics() == {"used": 0}


def test_misuse_inside_is_never_replaced() -> None:
    """A misuse error from a policy inside the fallback passes through, even with on=Exception."""
    import resilience

    guarded = resilience.compose(Fallback("fallback", on=Exception), resilience.Bulkhead(1))
    with pytest.raises(TypeError, match="returned an awaitable"):
        guarded.call(_coroutine_function)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_type_error_of_the_call_itself_still_falls_back() -> None:
    """Only misuse is exempt: a TypeError raised by the call is an ordinary failure."""

    async def fails() -> str:
        raise TypeError("bug downstream")

    fallback = Fallback("fallback", on=TypeError)
    assert await fallback.acall(fails) == "fallback"
    assert await fallback.acall(len, 3) == "fallback"  # type: ignore[arg-type]
    assert fallback.metrics() == {"used": 2}
