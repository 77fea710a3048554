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

    When the caller gets the hedge's answer, the pool holds only the
    winner's connection, idle: the loser's was closed before the call
    returned (docs/guide/hedging.md, The rules). The server then sees the
    first request disconnect (long before its 5 s answer; no bound in ms, as
    the server's thread is at the mercy of a loaded machine), and a
    2-connection pool still serves requests (nothing leaked); the breaker
    settled both permits.
    """
    hedge = Hedge(delay=0.05, name="tail")
    win = fresh("win")
    async with client(hedge) as http:
        response = await http.get(f"{tail.url}/tail/{win}?slow=1&seconds=5")
        pool = http._transport._inner._pool  # type: ignore[attr-defined]
        assert [(c.is_idle(), c.is_closed()) for c in pool.connections] == [(True, False)]
        assert response.text == f"{win} 2"
        assert response.extensions["resilience"]["attempts"] == 2
        for _ in range(400):  # up to ~4 s: before the server's 5 s answer would go out
            if any(key == win for key, _, _ in tail.disconnected):
                break
            await anyio.sleep(0.01)
        [(_, number, _)] = [d for d in tail.disconnected if d[0] == win]
        assert number == 1
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
    """2% of responses take 200 ms (every 50th), the rest ~1 ms: hedging cuts the p99.

    Without hedging, the 8 slow responses of 400 calls make the p99. With a
    hedge after 50 ms, the slow responses lose to their hedges: the answers
    the callers get come from fast requests. The server's request numbers say
    which answered, as the latencies themselves are at the mercy of a loaded
    machine (a stalled process makes fast calls slow for both runs alike);
    the benchmark measures the p99 (benchmarks/bench_hedge.py).
    """

    async def run(hedge: Hedge | None, key: str) -> tuple[list[float], list[int], int]:
        transport = AsyncResilientTransport(hedge=hedge, retry=False, breaker=False)
        latencies: list[float] = []
        answered: list[int] = []  # the server's number of the request that answered
        async with httpx.AsyncClient(transport=transport) as http:

            async def worker() -> None:
                for _ in range(50):
                    started = time.monotonic()
                    response = await http.get(f"{tail.url}/tail/{key}?every=50&seconds=0.2")
                    latencies.append(time.monotonic() - started)
                    answered.append(int(response.text.split()[1]))

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(worker)
        return latencies, answered, tail.counts[key]

    plain, plain_answers, plain_sent = await run(None, fresh("p99-plain"))
    # A fixed delay (the adaptive one is tested on a FakeClock) and a budget
    # that never runs out: on a loaded machine, where many calls take tens of
    # ms, a short delay and a small budget spend every token before the slow
    # calls come (the budget's bound is tested on a FakeClock).
    _, hedged_answers, hedged_sent = await run(Hedge(delay=0.05, ratio=1.0), fresh("p99-hedged"))
    assert sum(number % 50 == 0 for number in plain_answers) == 8
    assert quantile(plain, 0.99) >= 0.2
    assert sum(number % 50 == 0 for number in hedged_answers) <= 1
    assert plain_sent == 400
    assert 400 < hedged_sent <= 400 * 2 + 10


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


async def test_a_one_shot_body_is_buffered_for_hedges_without_retries(tail: TailServer) -> None:
    """buffer_bodies=True makes a generator body hedgeable with retries off.

    With retry=False, or a POST vouched for with {"hedge": True}: every
    attempt sends the whole body.

    docs/guide/hedging.md, In the httpx transport: "a body in memory (or buffer_bodies=True)".
    """

    async def body() -> Any:
        yield b"abc"
        yield b"def"

    hedge = Hedge(delay=0.02)
    put, post = fresh("gen"), fresh("gen")
    async with client(hedge, retry=False, buffer_bodies=True) as http:
        response = await http.put(f"{tail.url}/tail/{put}?slow=1&seconds=5", content=body())
        assert response.text == f"{put} 2"
    async with client(hedge, buffer_bodies=True) as http:
        response = await http.post(
            f"{tail.url}/tail/{post}?slow=1&seconds=5",
            content=body(),
            extensions={"resilience": {"hedge": True}},
        )
        assert response.text == f"{post} 2"


async def test_a_losing_response_is_closed_even_if_your_discard_hook_raises(
    tail: TailServer,
) -> None:
    """Your `discard_result` runs first; the transport closes the response even when it raises."""
    held: list[httpx.Response] = []

    def hook(response: httpx.Response) -> None:
        held.append(response)
        raise RuntimeError("a broken hook")

    hedge = Hedge(delay=5.0, discard_result=hook)
    key = fresh("hook")
    async with client(hedge, retry=False) as http:
        response = await http.get(f"{tail.url}/tail/{key}?status=503")
        assert response.status_code == 200
    [discarded] = held
    assert discarded.status_code == 503
    assert discarded.is_closed


async def test_a_pool_of_one_connection_does_not_deadlock(tail: TailServer) -> None:
    """max_connections=1: the hedge waits for the one connection; nothing deadlocks.

    The call ends when the first attempt answers, not at a pool timeout, and
    the pool serves again after.
    """
    hedge = Hedge(delay=0.02)
    key = fresh("pool")
    async with client(hedge, limits=httpx.Limits(max_connections=1)) as http:
        started = time.monotonic()
        with anyio.fail_after(3):
            response = await http.get(f"{tail.url}/tail/{key}?slow=1&seconds=0.2")
        assert response.text == f"{key} 1"
        assert time.monotonic() - started < 2
        with anyio.fail_after(3):
            assert (await http.get(f"{tail.url}/tail/after")).status_code == 200
        breaker = http._transport.breakers.get(tail.url)  # type: ignore[attr-defined]
        assert breaker.metrics().calls["ignored"] == 1  # the hedge that never got a connection


def test_hedging_state_per_origin_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many origins: the per-origin hedges (latencies, budget) are capped, oldest dropped."""
    import resilience.transport as transport_module

    monkeypatch.setattr(transport_module, "_MAX_ORIGINS", 5)
    transport = AsyncResilientTransport(hedge=Hedge(), retry=False)
    pipeline = transport._pipeline

    for number in range(40):
        request = httpx.Request("GET", f"http://host{number}.test/")
        assert pipeline.hedge_for(request, {}, None) is not None
    assert len(pipeline._hedges) == 5
    assert {origin for origin, _ in pipeline._hedges} == {
        f"http://host{n}.test:80" for n in range(35, 40)
    }


def test_one_origin_keeps_one_latency_window_whatever_the_budget() -> None:
    """A request with its retries off spends another budget, but the origin's latencies are one.

    docs/guide/hedging.md, In the httpx transport: "Each origin keeps its own
    latencies"; "When the origin's retries have a budget, the hedges spend from it".
    """
    transport = AsyncResilientTransport(hedge=Hedge())
    pipeline = transport._pipeline

    request = httpx.Request("GET", "http://one.test/")
    options: dict[str, object] = {}
    _, retry, _ = pipeline.route(request, options)
    assert retry is not None
    assert retry.budget is not None
    retried = pipeline.hedge_for(request, options, retry)
    unretried = pipeline.hedge_for(request, {"retry": False}, None)
    assert retried is not None
    assert unretried is not None
    assert retried.budget is retry.budget
    assert unretried.budget is not retry.budget
    assert retried._latencies is unretried._latencies


async def test_an_open_breaker_fails_the_call_at_once_without_a_hedge(tail: TailServer) -> None:
    """The origin's breaker is open: HTTPCircuitOpenError at once, no hedge sent or refused.

    A refused attempt sends no hedge (docs/guide/hedging.md, The rules: Failures),
    so an open breaker does not drain the origin's retry budget the hedges share.
    """
    hedge = Hedge(delay=0.02)
    async with client(hedge) as http:
        breaker = http._transport.breakers.get(tail.url)  # type: ignore[attr-defined]
        breaker.force_open()
        for _ in range(30):
            with pytest.raises(resilience.HTTPCircuitOpenError):
                await http.get(f"{tail.url}/tail/{fresh('open')}")
    assert hedge.metrics() == {"calls": 30, "sent": 0, "won": 0, "refused": 0, "deadline": 0}


async def test_a_transport_error_sends_the_next_hedge_at_once() -> None:
    """A transport error the default retry would retry is non-fatal: the hedge goes at once.

    docs/guide/hedging.md, In the httpx transport ("Unless your `Hedge` says otherwise").
    """
    calls: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text="second")

    hedge = Hedge(delay=30.0)
    events: list[object] = []
    hedge.events.subscribe(events.append)
    inner = httpx.MockTransport(handler)
    transport = AsyncResilientTransport(inner, hedge=hedge, retry=False)
    async with httpx.AsyncClient(transport=transport) as http:
        with anyio.fail_after(5):  # not after the 30 s delay
            response = await http.get("http://origin.test/")
    assert response.text == "second"
    assert response.extensions["resilience"]["attempts"] == 2
    [sent] = [e for e in events if isinstance(e, resilience.events.HedgeSent)]
    assert sent.reason == "failure"
