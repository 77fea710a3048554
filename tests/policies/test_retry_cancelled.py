"""A call that ends by cancellation or interrupt is counted too (docs/guide/retry.md, Observing).

`retry.metrics()` counts every call exactly once: the four outcomes plus
`cancelled`, whether the cancellation comes during the first attempt, during
the wait before a retry, or during a later attempt.
"""

from __future__ import annotations

import contextlib

import anyio
import pytest

from resilience import Backoff, Retry

OUTCOMES = (
    "success_first_try",
    "success_after_retry",
    "failed_after_retry",
    "failed_not_retryable",
    "cancelled",
)


class Transient(Exception):
    pass


def calls_counted(retry: Retry) -> int:
    metrics = retry.metrics()
    return sum(metrics[outcome] for outcome in OUTCOMES)


def make(wait: float = 0.05) -> Retry:
    # Real time: the cancellation must find the call asleep.
    return Retry(on=Transient, attempts=3, wait=Backoff(initial=wait, jitter="none"))


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["first attempt", "wait", "second attempt"])
async def test_a_cancelled_async_call_is_counted_once(where: str) -> None:
    """Another task cancels the call once it has reached `where` (no race with a timer).

    The wait before a retry is long where the cancellation must land in it.
    """
    retry = make(wait=10.0 if where == "wait" else 0.05)
    attempts = 0
    reached = anyio.Event()

    async def call() -> str:
        nonlocal attempts
        attempts += 1
        if where == "first attempt" or (where == "second attempt" and attempts == 2):
            reached.set()
            await anyio.sleep_forever()
        if where == "wait":
            reached.set()  # raised next: the retry waits 10 s before the next attempt
        raise Transient

    with anyio.fail_after(5), anyio.CancelScope() as scope:

        async def cancel_when_reached() -> None:
            await reached.wait()
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_reached)
            await retry.acall(call)
    assert retry.metrics()["cancelled"] == 1
    assert calls_counted(retry) == 1
    assert attempts == (1 if where != "second attempt" else 2)


@pytest.mark.parametrize("where", ["first attempt", "second attempt"])
def test_an_interrupted_sync_call_is_counted_once(where: str) -> None:
    retry = Retry(on=Transient, attempts=3, wait=0)
    attempts = 0

    def call() -> str:
        nonlocal attempts
        attempts += 1
        if where == "first attempt" or attempts == 2:
            raise KeyboardInterrupt
        raise Transient

    with pytest.raises(KeyboardInterrupt):
        retry.call(call)
    assert retry.metrics()["cancelled"] == 1
    assert calls_counted(retry) == 1


def test_every_outcome_adds_up_to_the_calls() -> None:
    """A mix of all outcomes: the counters sum to the calls made."""
    retry = Retry(on=Transient, attempts=2, wait=0)
    script = iter(
        [None, Transient(), None, Transient(), Transient(), ValueError(), KeyboardInterrupt()]
    )

    def call() -> str:
        error = next(script)
        if error is not None:
            raise error
        return "ok"

    made = 0
    for _ in range(5):
        made += 1
        with contextlib.suppress(Transient, ValueError, KeyboardInterrupt):
            retry.call(call)
    assert calls_counted(retry) == made
    assert all(retry.metrics()[outcome] == 1 for outcome in OUTCOMES)
