from __future__ import annotations

import anyio
import pytest

from resilience import CircuitBreaker, CircuitOpenError, Fallback


class Down(Exception):
    pass


def test_value_fallback_on_matching_exceptions() -> None:
    """A matching exception is replaced by the value; others propagate."""
    fallback = Fallback([], on=Down)

    @fallback
    def recommendations(fail_with: type[Exception] | None) -> list[str]:
        if fail_with:
            raise fail_with
        return ["a"]

    assert recommendations(None) == ["a"]
    assert recommendations(Down) == []
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
    ("kwargs", "error"),
    [
        ({"on": None}, TypeError),
        ({"on": Down, "on_result": 3}, TypeError),
        ({"on": Down, "name": ""}, ValueError),
    ],
)
def test_bad_fallbacks(kwargs, error) -> None:
    """on= is required and validated; on_result must be callable."""
    with pytest.raises(error):
        Fallback(None, **kwargs)


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
