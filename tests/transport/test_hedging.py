"""Hedging in AsyncResilientTransport, against a real loopback server (docs/guide/hedging.md).

The server is a raw ASGI app that answers `/tail/{key}` after a delay chosen
per request and notices when a client gives up on a request (ASGI
`http.disconnect`), so the tests see losers cancelled from the server's side.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

import resilience
from resilience import AsyncResilientTransport, Hedge, MisuseError, ResilientTransport
from tests.servers import serve_in_thread

pytestmark = pytest.mark.anyio


class TailServer:
    """Per key: the first `slow` requests take `seconds`, the rest 1 ms (or every `every`-th).

    Query: `slow` (how many slow ones first), `seconds`, `every` (every n-th
    request is slow instead), `status` (the first request's status).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.disconnected: list[tuple[str, int, float]] = []  # key, request number, when
        self.in_flight = 0
        self.url = ""

    def count(self, key: str) -> int:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.counts[key]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        key = scope["path"].rsplit("/", 1)[-1]
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if part
        )
        number = self.count(key)
        every = int(query.get("every", "0"))
        slow = (number % every == 0) if every else number <= int(query.get("slow", "0"))
        seconds = float(query.get("seconds", "2")) if slow else 0.001
        status = int(query.get("status", "200")) if number == 1 else 200
        self.in_flight += 1
        try:
            body = await receive()
            while body.get("more_body"):
                body = await receive()
            waiting = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({waiting}, timeout=seconds)
            if done and waiting.result()["type"] == "http.disconnect":
                with self.lock:
                    self.disconnected.append((key, number, time.monotonic()))
                return
            waiting.cancel()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": f"{key} {number}".encode()})
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def tail() -> Iterator[TailServer]:
    server = TailServer()
    with serve_in_thread(server) as url:
        server.url = url
        yield server


_keys = itertools.count()


def fresh(name: str) -> str:
    """A key no other test (nor the other backend's run) has used."""
    return f"{name}{next(_keys)}"


def client(hedge: Hedge, **options: Any) -> httpx.AsyncClient:
    options.setdefault("limits", httpx.Limits(max_connections=2))
    return httpx.AsyncClient(transport=AsyncResilientTransport(hedge=hedge, **options))


async def test_the_hedge_wins_and_the_server_sees_the_loser_disconnect(tail: TailServer) -> None:
    """The loser is cancelled before the response is returned: its connection is closed.

    The server sees the first request disconnected within 50 ms of the
    caller getting the hedge's answer, and a 2-connection pool still serves
    requests (nothing leaked); the breaker settled both permits.
    """
    hedge = Hedge(delay=0.05, name="tail")
    win = fresh("win")
    async with client(hedge) as http:
        response = await http.get(f"{tail.url}/tail/{win}?slow=1&seconds=5")
        returned = time.monotonic()
        assert response.text == f"{win} 2"
        assert response.extensions["resilience"]["attempts"] == 2
        for _ in range(200):
            if any(key == win for key, _, _ in tail.disconnected):
                break
            await anyio.sleep(0.005)
        [(_, number, seen)] = [d for d in tail.disconnected if d[0] == win]
        assert number == 1
        assert seen - returned <= 0.05
        for _ in range(5):  # both connections are free again
            assert (await http.get(f"{tail.url}/tail/after")).status_code == 200
        breaker = http._transport.breakers.get(tail.url)  # type: ignore[attr-defined]
        calls = breaker.metrics().calls
        assert calls["success"] == 6
        assert calls["ignored"] == 1  # the cancelled loser says nothing about the server
    assert hedge.metrics()["won"] == 1


async def test_only_idempotent_requests_are_hedged(tail: TailServer) -> None:
    """A POST is not hedged (same rule as retries); an Idempotency-Key makes it hedgeable."""
    hedge = Hedge(delay=0.02)
    post, keyed, off = fresh("post"), fresh("keyed"), fresh("off")
    async with client(hedge) as http:
        response = await http.post(f"{tail.url}/tail/{post}?slow=1&seconds=0.2", content=b"x")
        assert response.text == f"{post} 1"
        with_key = await http.post(
            f"{tail.url}/tail/{keyed}?slow=1&seconds=5",
            content=b"x",
            headers={"Idempotency-Key": "k1"},
        )
        assert with_key.text == f"{keyed} 2"
        switched_off = await http.get(
            f"{tail.url}/tail/{off}?slow=1&seconds=0.2",
            extensions={"resilience": {"hedge": False}},
        )
        assert switched_off.text == f"{off} 1"


async def test_a_failure_status_sends_the_next_hedge_at_once(tail: TailServer) -> None:
    """A retryable status (503) is non-fatal: the next hedge goes at once, not after the delay."""
    hedge = Hedge(delay=5.0)
    status = fresh("status")
    async with client(hedge, retry=False) as http:
        started = time.monotonic()
        response = await http.get(f"{tail.url}/tail/{status}?status=503")
        assert response.status_code == 200
        assert response.text == f"{status} 2"
        assert time.monotonic() - started < 4  # not after the 5 s delay


async def test_streamed_winner_is_the_first_with_headers(tail: TailServer) -> None:
    """A streamed request's winner is the first response whose headers arrive."""
    hedge = Hedge(delay=0.02)
    stream = fresh("stream")
    url = f"{tail.url}/tail/{stream}?slow=1&seconds=5"
    async with client(hedge) as http, http.stream("GET", url) as response:
        assert (await response.aread()) == f"{stream} 2".encode()


async def test_hedges_share_the_origin_retry_budget(tail: TailServer) -> None:
    """With a Retry that has a budget, the hedges spend from it; it is fed by the retries."""
    budget = resilience.RetryBudget(ratio=0.0, min_per_second=0.1, window=10)
    retry = resilience.Retry(on=httpx.TransportError, budget=budget)
    hedge = Hedge(delay=0.02)
    first, second = fresh("budget"), fresh("budget")
    async with client(hedge, retry=retry) as http:
        hedged = await http.get(f"{tail.url}/tail/{first}?slow=1&seconds=0.2")
        assert hedged.text == f"{first} 2"  # the budget's one token
        refused = await http.get(f"{tail.url}/tail/{second}?slow=1&seconds=0.2")
        assert refused.text == f"{second} 1"  # no token left: the slow one answers
    assert budget.metrics() == {"requests": 2, "exhausted": 1}
    assert hedge.metrics()["refused"] == 1


def test_the_sync_transport_refuses_hedge() -> None:
    """ResilientTransport(hedge=...) raises MisuseError: a blocking request cannot be cancelled."""
    with pytest.raises(MisuseError, match="AsyncResilientTransport"):
        ResilientTransport(hedge=Hedge())  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="hedge="):
        AsyncResilientTransport(hedge=True)  # type: ignore[arg-type]


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # timing: one backend is enough
async def test_hedging_cuts_the_p99(tail: TailServer) -> None:
    """2% of responses take 200 ms (every 50th), the rest ~1 ms: hedging cuts the p99."""

    async def run(hedge: Hedge | None, key: str) -> tuple[list[float], int]:
        transport = AsyncResilientTransport(hedge=hedge, retry=False, breaker=False)
        latencies: list[float] = []
        async with httpx.AsyncClient(transport=transport) as http:

            async def worker() -> None:
                for _ in range(50):
                    started = time.monotonic()
                    await http.get(f"{tail.url}/tail/{key}?every=50&seconds=0.2")
                    latencies.append(time.monotonic() - started)

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(worker)
        return latencies, tail.counts[key]

    plain, plain_sent = await run(None, fresh("p99-plain"))
    # A fixed delay: the adaptive one is tested on a FakeClock, and a loaded CI
    # machine's noise would move it here.
    hedged, hedged_sent = await run(Hedge(delay=0.02, ratio=0.2), fresh("p99-hedged"))
    assert quantile(plain, 0.99) >= 0.15
    assert quantile(hedged, 0.99) * 2 < quantile(plain, 0.99)
    assert plain_sent == 400
    assert hedged_sent <= 400 * 1.2 + 10


async def test_each_origin_has_its_own_latencies_and_budget(tail: TailServer) -> None:
    """Per origin: its own adaptive delay; with retries off, its own hedge budget.

    `{"hedge": True}` hedges a request the method rule would not (the caller vouches).
    """
    hedge = Hedge(min_samples=1, window=5, warmup_delay=0.05)
    other = tail.url.replace("127.0.0.1", "localhost")
    async with client(hedge, retry=False) as http:
        await http.get(f"{tail.url}/tail/{fresh('origin')}")
        await http.get(f"{other}/tail/{fresh('origin')}?slow=1&seconds=0.3")
        forced = fresh("forced")
        response = await http.post(
            f"{tail.url}/tail/{forced}?slow=1&seconds=5",
            content=b"x",
            extensions={"resilience": {"hedge": True}},
        )
        assert response.text == f"{forced} 2"
        hedges = http._transport._pipeline._hedges  # type: ignore[attr-defined]
    by_origin = {origin: made for (origin, _), made in hedges.items()}
    assert len(by_origin) == 2
    near, far = by_origin[tail.url], by_origin[other]
    assert near._latencies is not far._latencies
    assert near.current_delay() < 0.05 < far.current_delay()
    assert near.budget is not far.budget


async def test_each_attempt_takes_its_own_limit_slot_given_back_once(tail: TailServer) -> None:
    """With concurrency_limit=True, the hedge and the loser each held a slot; both come back."""
    hedge = Hedge(delay=0.02)
    key = fresh("slots")
    async with client(hedge, concurrency_limit=True) as http:
        response = await http.get(f"{tail.url}/tail/{key}?slow=1&seconds=5")
        assert response.text == f"{key} 2"
        limit = http._transport.concurrency_limits[tail.url]  # type: ignore[attr-defined]
        assert limit.in_flight == 0
        counts = limit.metrics()
        assert counts["succeeded"] + counts["ignored"] + counts["dropped"] == 2
        assert counts["ignored"] == 1  # the cancelled loser: no sample
