"""What every demo scenario shares: servers on loopback, a load loop, honest statistics.

An answer is one of three outcomes: *full* (the whole chain worked),
*degraded* (a fallback answered) or *failed* (an error or no answer in time).
Every count below is checked to add up: full + degraded + failed = answers.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import uvicorn

from ._scenario import Row

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

Outcome = Literal["full", "degraded", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("full", "degraded", "failed")
#: "Recovered" means more than this share of a one-second window's answers were full.
RECOVERED_SHARE = 0.99


@contextmanager
def serve(app: Any, *, stops: list[Callable[[], None]] | None = None) -> Iterator[str]:
    """Run an ASGI app under uvicorn on 127.0.0.1 (a free port) in a thread; yield its URL.

    `stops`, if given, receives a function that asks the server to stop
    without waiting for it: call those of several servers first, and they
    shut down together instead of one after the other.
    """
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted sockets (no 40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="critical",
        lifespan="off",
        timeout_keep_alive=30,
        # Hung requests are not waited for (a float works: it goes to asyncio.timeout).
        timeout_graceful_shutdown=0.2,  # type: ignore[arg-type]
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
    if stops is not None:
        stops.append(lambda: setattr(server, "should_exit", True))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for a process that binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class WorkerPool:
    """A fixed number of workers in front of an ASGI app; requests over it wait in a queue.

    What bounds a real service's concurrency: a thread pool (Starlette runs
    sync endpoints in one), a process's workers (gunicorn), a database pool.
    A request holds its worker until its answer is sent, however long the
    work inside takes; the others queue (used from one event loop).
    """

    def __init__(self, app: Any, workers: int) -> None:
        self.app = app
        self.workers = workers
        self._free = asyncio.Semaphore(workers)
        self.busy = Gauge()
        self.queued = Gauge()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._free.locked():  # every worker busy: this request waits its turn
            with self.queued:
                await self._free.acquire()
        else:
            await self._free.acquire()
        try:
            with self.busy:
                await self.app(scope, receive, send)
        finally:
            self._free.release()


@dataclass(frozen=True)
class Sample:
    """One request the load generator made."""

    started: float  # seconds since the run began
    latency: float
    outcome: Outcome
    kind: str = ""  # which request of the traffic mix (see `run_load`'s `mix`)


@dataclass(frozen=True)
class Bucket:
    """The answers to the requests started in one second of a run."""

    start: float
    full: int
    degraded: int
    failed: int
    p99_seconds: float

    @property
    def answers(self) -> int:
        return self.full + self.degraded + self.failed


async def run_load(
    call: Callable[[httpx.AsyncClient, str], Awaitable[Outcome]],
    *,
    clients: int,
    duration: float,
    client_timeout: float,
    mix: Sequence[str] = ("",),
    on_tick: Callable[[float], None] | None = None,
) -> list[Sample]:
    """`clients` concurrent loops calling `call` for `duration` seconds; one sample per call.

    The n-th request of the run (over all clients) is of kind `mix[n % len(mix)]`:
    the kinds keep their shares exactly, whatever each kind's latency.
    """
    samples: list[Sample] = []
    issued = itertools.count()
    begin = time.monotonic()
    end = begin + duration
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)

    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as client:

        async def loop() -> None:
            while (now := time.monotonic()) < end:
                kind = mix[next(issued) % len(mix)]
                outcome: Outcome
                try:
                    outcome = await asyncio.wait_for(call(client, kind), client_timeout)
                except Exception:  # noqa: BLE001  (a failed request is a data point)
                    outcome = "failed"
                samples.append(Sample(now - begin, time.monotonic() - now, outcome, kind))
                if outcome == "failed":
                    await asyncio.sleep(0.01)  # a real client does not spin on errors

        async def ticker() -> None:
            while (now := time.monotonic()) < end:
                if on_tick is not None:
                    on_tick(now - begin)
                await asyncio.sleep(0.2)

        await asyncio.gather(ticker(), *(loop() for _ in range(clients)))
    return samples


async def open_loop(
    call: Callable[[httpx.AsyncClient], Awaitable[bool]],
    *,
    rate: float,
    duration: float,
    give_up_after: float,
    begin: list[float],
    on_tick: Callable[[float], None],
) -> list[Sample]:
    """Arrivals at `rate` per second for `duration` seconds, whatever happens to earlier requests.

    Real users keep arriving while a service is slow (an open loop; a closed
    loop of clients would slow down with it and hide the tail). `call`
    returns whether the answer was full; an exception, or no answer within
    `give_up_after` seconds, is a failure. A sample's latency counts from
    when its arrival was due, so a busy event loop's lag is not hidden.
    `begin[0]` is set to when the arrivals start (servers read it to know
    which phase they are in). At most `rate * duration` calls, then it waits
    for those still running.
    """
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(started: float) -> None:
            outcome: Outcome
            try:
                ok = await asyncio.wait_for(call(client), give_up_after)
                outcome = "full" if ok else "failed"
            except Exception:  # noqa: BLE001  (a failed request is a data point)
                outcome = "failed"
            samples.append(Sample(started, time.monotonic() - begin[0] - started, outcome))

        tasks = set()
        begin[0] = time.monotonic()
        arrivals = math.ceil(rate * duration - 1e-9)  # at 0, 1 / rate, 2 / rate...
        arrived = 0
        last_tick = 0.0
        while arrived < arrivals:
            now = time.monotonic() - begin[0]
            # Every arrival due: a loop that was kept busy catches up.
            while arrived < arrivals and arrived / rate <= now:
                task = asyncio.create_task(one(arrived / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                arrived += 1
            if now - last_tick > 0.2:
                on_tick(now)
                last_tick = now
            await asyncio.sleep(max(0.0, min(arrived / rate - now, 0.01)))
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


def count_outcomes(samples: Sequence[Sample]) -> dict[str, int]:
    """answers, full, degraded, failed; raises if the three do not add up to the answers."""
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    for sample in samples:
        counts[sample.outcome] += 1
    totals = {"answers": len(samples), **counts}
    check_outcomes(totals)
    return totals


def check_outcomes(totals: dict[str, Any]) -> None:
    """Full + degraded + failed must be all the answers: no answer is counted twice or lost."""
    parts = totals["full"] + totals["degraded"] + totals["failed"]
    if parts != totals["answers"]:
        raise AssertionError(
            f"full {totals['full']} + degraded {totals['degraded']} + failed "
            f"{totals['failed']} = {parts}, not the {totals['answers']} answers"
        )


def per_second(samples: Sequence[Sample], duration: float) -> list[Bucket]:
    """One bucket per second of the run, by the second each request started in."""
    groups: list[list[Sample]] = [[] for _ in range(max(math.ceil(duration), 1))]
    for sample in samples:
        groups[min(int(sample.started), len(groups) - 1)].append(sample)
    buckets = []
    for second, group in enumerate(groups):
        counts = count_outcomes(group)
        buckets.append(
            Bucket(
                float(second),
                counts["full"],
                counts["degraded"],
                counts["failed"],
                percentile([s.latency for s in group], 99),
            )
        )
    return buckets


def recovery_seconds(samples: Sequence[Sample], fault_end: float, run_end: float) -> float | None:
    """Seconds from the end of the fault until full answers are back above 99%.

    One-second windows start at the fault's end, then one, two... seconds
    later; the answer is the start of the first window, relative to the end
    of the fault, in which more than 99% of the requests started were
    answered in full. None when no whole window within the run qualifies.
    """
    k = 0
    while fault_end + k + 1 <= run_end + 1e-9:
        window = [s for s in samples if fault_end + k <= s.started < fault_end + k + 1]
        if window and sum(s.outcome == "full" for s in window) > RECOVERED_SHARE * len(window):
            return float(k)
        k += 1
    return None


def recovery_row(label: str) -> Row:
    """The table row for `recovery_seconds` (its threshold in the label, from `RECOVERED_SHARE`)."""
    return Row(
        "recovery_seconds",
        f"{label} (full > {RECOVERED_SHARE:.0%})",
        "{:.0f} s",
        "lower",
        missing="not in run",
    )


async def paired_latencies(
    direct: Callable[[], Awaitable[object]], via: Callable[[], Awaitable[object]], count: int
) -> tuple[list[float], list[float]]:
    """`count` calls each way, one after the other and interleaved (the same noise hits both).

    Returns the latencies in seconds of the direct calls and of the calls via the hop.
    """
    direct_latencies: list[float] = []
    via_latencies: list[float] = []
    for _ in range(count):
        for call, latencies in ((direct, direct_latencies), (via, via_latencies)):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)
    return direct_latencies, via_latencies
