"""What both demo scenarios share: servers on loopback, a load loop, statistics."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn on 127.0.0.1 (a free port) in a thread; yield its URL."""
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted sockets (no 40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="critical",
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    give_up = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > give_up or not thread.is_alive():
            raise RuntimeError("a loopback server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@dataclass
class Gauge:
    """A concurrency gauge that remembers its peak (used from one event loop)."""

    now: int = 0
    peak: int = 0

    def __enter__(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


@dataclass
class Sample:
    """One request the load generator made."""

    started: float  # seconds since the run began
    latency: float
    ok: bool


@dataclass
class RunResult:
    """What a run measured; every figure comes from these samples and counters."""

    samples: list[Sample] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)


async def run_load(
    call: Callable[[httpx.AsyncClient], Awaitable[bool]],
    *,
    clients: int,
    duration: float,
    client_timeout: float,
    on_tick: Callable[[float], None] | None = None,
) -> list[Sample]:
    """`clients` concurrent loops calling `call` for `duration` seconds; one sample per call."""
    samples: list[Sample] = []
    begin = time.monotonic()
    end = begin + duration
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)

    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as client:

        async def loop() -> None:
            while (now := time.monotonic()) < end:
                try:
                    ok = await asyncio.wait_for(call(client), client_timeout)
                except Exception:  # noqa: BLE001  (a failed request is a data point)
                    ok = False
                samples.append(Sample(now - begin, time.monotonic() - now, ok))
                if not ok:
                    await asyncio.sleep(0.01)  # a real client does not spin on errors

        async def ticker() -> None:
            while (now := time.monotonic()) < end:
                if on_tick is not None:
                    on_tick(now - begin)
                await asyncio.sleep(0.2)

        await asyncio.gather(ticker(), *(loop() for _ in range(clients)))
    return samples


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


def success_rate(samples: list[Sample]) -> float:
    return sum(s.ok for s in samples) / len(samples) if samples else math.nan


def recovery_time(samples: list[Sample], fault_end: float, *, bucket: float = 0.5) -> float | None:
    """Seconds after `fault_end` until a bucket of requests succeeds at >= 95%, or None."""
    last = max((s.started for s in samples), default=fault_end)
    t = fault_end
    while t <= last:
        window = [s for s in samples if t <= s.started < t + bucket]
        if window and success_rate(window) >= 0.95:
            return t - fault_end
        t += bucket
    return None


def timeline(samples: list[Sample], *, bucket: float = 0.5) -> list[tuple[float, float, float]]:
    """(time, success rate, p99 latency) per bucket, for the plot."""
    if not samples:
        return []
    rows = []
    end = max(s.started for s in samples)
    t = 0.0
    while t <= end:
        window = [s for s in samples if t <= s.started < t + bucket]
        if window:
            rows.append((t, success_rate(window), percentile([s.latency for s in window], 99)))
        t += bucket
    return rows
