"""An adaptive concurrency limit finding out how much a downstream takes, in fake time.

The downstream answers 200 to at most 10 calls at once and 503 ("overloaded")
to the rest. A burst of 30 calls arrives every round; the limit admits what
it allows, rejects the rest at once, and learns from each answer: AIMD adds
one while the limit is used and backs off by 10% on every 503. The limit
saws up and down around the downstream's 10 (AIMD's sawtooth) without
anyone telling it that number, which a bulkhead would have needed.

Run: python examples/adaptive_limit.py
"""

from __future__ import annotations

from collections import Counter

import resilience
from resilience.testing import FakeClock

CAPACITY = 10  # the downstream's real limit, unknown to the client


class Response:
    """A stand-in for an httpx response: anything with an int `status_code`."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def main() -> None:
    clock = FakeClock()
    # window=None: every answer is a sample, so each round shows the algorithm at
    # work (the default aggregates samples over windows of 0.1 s or more).
    limit = resilience.ConcurrencyLimit(
        resilience.AIMDLimit(initial_limit=4, window=None), name="inventory", clock=clock
    )
    changes: list[resilience.events.Event] = []
    limit.events.subscribe(changes.append)
    for round_number in range(1, 9):
        before = limit.limit
        permits, rejected = [], 0
        for _ in range(30):
            try:
                permits.append(limit.acquire())
            except resilience.ConcurrencyLimitExceededError:
                rejected += 1
        clock.advance(0.05)  # the calls take 50 ms
        overloaded = 0
        for position, permit in enumerate(permits, start=1):
            status = 200 if position <= CAPACITY else 503
            overloaded += status == 503
            permit.record_result(Response(status))  # a 503 is a drop
        print(
            f"round {round_number}: limit {before:>2}, admitted {len(permits):>2}, "
            f"503s {overloaded}, rejected at once {rejected:>2} -> limit {limit.limit}"
        )
    held = [limit.acquire() for _ in range(limit.limit)]
    try:
        limit.acquire()
    except resilience.ConcurrencyLimitExceededError as error:
        print(f"rejected: {error}")
        print(f"a BulkheadFullError too: {isinstance(error, resilience.BulkheadFullError)}")
    finally:
        for permit in held:
            permit.release()
    print(f"metrics: {limit.metrics()}")
    kinds = Counter(event.kind for event in changes)
    print(f"events: {dict(sorted(kinds.items()))}")


if __name__ == "__main__":
    main()
