"""Hedged calls: a slow attempt gets a backup after 20 ms; the first answer wins.

Run: python examples/hedging.py
"""

from __future__ import annotations

import asyncio

import resilience

# A fixed delay keeps the example's output the same on every machine; leave
# delay= out for the adaptive one (the p95 of recent latencies).
hedge = resilience.Hedge(delay=0.02, name="quotes")
hedge.events.subscribe(lambda event: print(f"  event: {event.kind} (attempt {event.attempt})"))  # type: ignore[attr-defined]

latencies = iter([0.5, 0.005, 0.005])  # the first replica we reach is stuck
cancelled: list[int] = []
attempts = 0


@hedge
async def quote(symbol: str) -> str:
    global attempts
    attempts += 1
    number = attempts
    try:
        await asyncio.sleep(next(latencies))
    except asyncio.CancelledError:
        cancelled.append(number)  # the loser's cleanup runs before the caller gets the answer
        raise
    return f"{symbol} 101.5 (attempt {number})"


def plain(symbol: str) -> str:
    return symbol


async def main() -> None:
    print(f"quote: {await quote('ACME')}; cancelled before the return: {cancelled}")
    print(f"quote: {await quote('ACME')}")  # fast: no hedge
    print(f"metrics: {hedge.metrics()}")
    try:
        hedge(plain)
    except resilience.MisuseError as error:
        print(f"sync: {type(error).__name__}: hedging needs async code")


if __name__ == "__main__":
    asyncio.run(main())
