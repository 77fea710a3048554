"""Breakers shared through a real redis-server (Debian package, installed by .ci/run).

The server is started by a fixture on a free loopback port, without
persistence. Locally the tests skip if redis-server is missing; on CI
(CI=true) a missing binary fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

import resilience
from resilience import State

redis_lib = pytest.importorskip("redis")
import resilience.redis as rr  # noqa: E402

from .redis_server import RedisServer, free_port  # noqa: E402

WORKER_TRIP = """
import sys, time
import resilience, resilience.redis as rr
url, prefix = sys.argv[1], sys.argv[2]
shared = rr.RedisSharedState(url, prefix=prefix, flush_interval=0.005).start()
breaker = shared.attach(resilience.CircuitBreaker(
    "fleet", failure_rate_threshold=0.5, minimum_calls=5, open_duration=30))
print("ready", flush=True)
sys.stdin.readline()  # all workers start together
failures = 0
give_up = time.monotonic() + 20
while time.monotonic() < give_up:
    try:
        permit = breaker.acquire()
    except resilience.CircuitOpenError:
        break
    time.sleep(0.01)  # the dead downstream takes 10 ms to fail
    permit.record_failure()
    failures += 1
print(failures, flush=True)
shared.stop()
"""


def start_workers(code: str, *args: str, count: int = 4) -> list[subprocess.Popen[str]]:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    return workers


def test_four_processes_trip_together(redis_server: RedisServer) -> None:
    """Fleet-wide failures before every process rejects: near the fleet's threshold, not 4x.

    The pooled rule is the failure rate over the fleet window (minimum_calls=5);
    consecutive failures are each process's own (see the guide's Protocol).
    """
    workers = start_workers(WORKER_TRIP, redis_server.url, "trip")
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    counts = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        counts.append(int(out.strip()))
    total = sum(counts)
    # Alone, each process would fail 5 times (20 in all) before rejecting. Shared:
    # the fleet's minimum_calls (5), plus what each process had in flight while
    # the news travelled (a flush every 5 ms, then pub/sub): at most two calls each.
    assert total <= 5 + 2 * 4, counts
    assert total < 4 * 5, counts
    assert all(count < 5 for count in counts), counts


WORKER_PROBES = """
import sys, time
import resilience, resilience.redis as rr
url, prefix = sys.argv[1], sys.argv[2]
shared = rr.RedisSharedState(url, prefix=prefix, flush_interval=0.005).start()
breaker = shared.attach(resilience.CircuitBreaker(
    "probes", consecutive_failures=1, failure_rate_threshold=None, open_duration=0.5,
    half_open_max_calls=2))
breaker.acquire().record_failure()  # every process opens (and reports to the fleet)
print("ready", flush=True)
sys.stdin.readline()
granted = []
for _ in range(20):
    try:
        granted.append(breaker.acquire())  # probes held, never settled here
    except resilience.CircuitOpenError:
        pass
print(len(granted), flush=True)
shared.stop()
"""


def test_fleet_half_open_admits_at_most_n_probes(redis_server: RedisServer) -> None:
    """Four processes ask for probes at once; Redis grants half_open_max_calls in all."""
    workers = start_workers(WORKER_PROBES, redis_server.url, "probes")
    time.sleep(0.7)  # past the open period: every process is half-open
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    granted = [int(worker.communicate(timeout=60)[0].strip()) for worker in workers]
    assert sum(granted) == 2, granted


def test_redis_down_loses_no_call_and_sharing_resumes(redis_server: RedisServer) -> None:
    """Kill Redis mid-run: calls go on locally; restart it: transitions are shared again."""
    shared = rr.RedisSharedState(redis_server.url, prefix="down", flush_interval=0.01).start()
    other = rr.RedisSharedState(redis_server.url, prefix="down", flush_interval=0.01).start()
    breaker = shared.attach(resilience.CircuitBreaker("svc", consecutive_failures=50))
    peer = other.attach(resilience.CircuitBreaker("svc", consecutive_failures=50))
    done = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def caller() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                breaker.acquire().record_success()
                done += 1
            except BaseException as error:
                errors.append(error)
            time.sleep(0.001)

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        time.sleep(0.2)
        redis_server.kill()
        before = done
        time.sleep(0.5)
        assert done > before  # calls went on while Redis was down
        assert shared.metrics()["faults"] > 0
        redis_server.start()  # same port
        flushes = shared.metrics()["flushes"]
        give_up = time.monotonic() + 15
        while shared.metrics()["flushes"] == flushes and time.monotonic() < give_up:
            time.sleep(0.05)
        assert shared.metrics()["flushes"] > flushes  # flushing again
        time.sleep(0.5)  # the listeners resubscribe (backoff)
        peer.force_open()  # operator states are local: not shared...
        assert breaker.state is State.CLOSED
        peer.reset()
        for _ in range(50):  # ...but a trip is (the fleet may trip it first)
            try:
                peer.acquire().record_failure()
            except resilience.CircuitOpenError:
                break
        give_up = time.monotonic() + 10
        while breaker.state is not State.OPEN and time.monotonic() < give_up:
            time.sleep(0.02)
        assert breaker.state is State.OPEN
    finally:
        stop.set()
        thread.join(timeout=10)
        shared.stop()
        other.stop()
    assert errors == [] or all(isinstance(e, resilience.CircuitOpenError) for e in errors)
    assert done > 0


def test_no_redis_at_all_never_breaks_a_call() -> None:
    """With nothing listening on the port, breakers behave exactly as local ones."""
    shared = rr.RedisSharedState(f"redis://127.0.0.1:{free_port()}/0", flush_interval=0.01).start()
    breaker = shared.attach(
        resilience.CircuitBreaker("alone", consecutive_failures=2, open_duration=0.05)
    )
    try:
        breaker.acquire().record_failure()
        breaker.acquire().record_failure()
        assert breaker.state is State.OPEN
        time.sleep(0.06)
        probe = breaker.acquire()  # the probe grant fails: decided locally
        assert probe.probe
        probe.record_success()
        assert breaker.state is State.CLOSED
        time.sleep(0.1)
        assert shared.metrics()["faults"] > 0
    finally:
        shared.stop()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"flush_interval": 0}, ValueError, "flush_interval="),
        ({"batch_size": 0}, ValueError, "batch_size="),
        ({"prefix": ""}, ValueError, "prefix="),
        ({"socket_timeout": -1}, ValueError, "socket_timeout="),
        ({"bucket_seconds": "1"}, TypeError, "bucket_seconds="),
    ],
)
def test_bad_configuration(kwargs, error, match) -> None:
    """Every option is validated at construction."""
    with pytest.raises(error, match=match):
        rr.RedisSharedState("redis://127.0.0.1:1/0", **kwargs)


def test_attach_takes_breakers_only() -> None:
    """attach() refuses anything but a CircuitBreaker."""
    shared = rr.RedisSharedState("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="CircuitBreaker"):
        shared.attach("payments")  # type: ignore[arg-type]


# -- redis.asyncio clients --------------------------------------------------------------


def async_state(url: str, prefix: str) -> rr.RedisSharedState:
    client = redis_lib.asyncio.Redis.from_url(url, socket_timeout=0.5)
    return rr.RedisSharedState(client=client, prefix=prefix, flush_interval=0.01)


async def stop_and_close(*states: rr.RedisSharedState) -> None:
    """astop() leaves the client to its owner (here, the test): close it too."""
    for state in states:
        await state.astop()
        await state._redis.aclose()


def test_asyncio_client_shares_a_trip(redis_server: RedisServer) -> None:
    """Two processes' worth of state on asyncio clients: one trips, the other learns of it."""

    async def main() -> None:
        shared = await async_state(redis_server.url, "atrip").astart()
        other = await async_state(redis_server.url, "atrip").astart()
        breaker = shared.attach(resilience.CircuitBreaker("svc", consecutive_failures=3))
        peer = other.attach(resilience.CircuitBreaker("svc", consecutive_failures=3))
        opened = asyncio.Event()
        peer.events.subscribe(
            lambda event: opened.set() if getattr(event, "to_state", None) is State.OPEN else None
        )

        @breaker
        async def dead() -> None:
            raise ConnectionError("down")

        try:
            await asyncio.sleep(0.1)  # both listeners subscribed
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    await dead()
            assert breaker.state is State.OPEN
            async with asyncio.timeout(5):  # applied by the peer's listen task, on this loop
                await opened.wait()
            assert peer.state is State.OPEN
            assert other.metrics()["received"] >= 1
            assert shared.metrics()["flushes"] > 0
        finally:
            await stop_and_close(shared, other)

    asyncio.run(main())


def test_asyncio_fleet_half_open_grants_at_most_n_probes(redis_server: RedisServer) -> None:
    """Forty concurrent async calls across two states: Redis admits half_open_max_calls."""

    async def main() -> None:
        states = [await async_state(redis_server.url, "aprobe").astart() for _ in range(2)]
        breakers = [
            state.attach(
                resilience.CircuitBreaker(
                    "probes",
                    consecutive_failures=1,
                    failure_rate_threshold=None,
                    open_duration=0.2,
                    half_open_max_calls=2,
                )
            )
            for state in states
        ]
        release = asyncio.Event()
        entered = 0

        async def probe() -> None:
            nonlocal entered
            entered += 1
            await release.wait()

        calls = [breaker(probe) for breaker in breakers]
        try:
            for breaker in breakers:
                breaker.acquire().record_failure()
            await asyncio.sleep(0.3)  # past the open period on both
            tasks = [asyncio.create_task(calls[i % 2]()) for i in range(40)]
            await asyncio.sleep(0.3)
            assert entered == 2  # fleet-wide, not 2 per process
            release.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            rejected = [r for r in results if isinstance(r, resilience.CircuitOpenError)]
            assert len(rejected) == 38
            assert all(r is None or isinstance(r, resilience.CircuitOpenError) for r in results)
        finally:
            await stop_and_close(*states)

    asyncio.run(main())


def test_asyncio_client_without_redis_runs_locally() -> None:
    """No server: async calls go on as with local breakers; faults are counted."""

    async def main() -> None:
        client = redis_lib.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.05)
        shared = await rr.RedisSharedState(client=client, flush_interval=0.01).astart()
        breaker = shared.attach(
            resilience.CircuitBreaker("alone", consecutive_failures=2, open_duration=0.05)
        )

        @breaker
        async def call(fail: bool) -> str:
            if fail:
                raise ConnectionError
            return "ok"

        try:
            for _ in range(2):
                with pytest.raises(ConnectionError):
                    await call(True)
            assert breaker.state is State.OPEN
            await asyncio.sleep(0.06)
            assert await call(False) == "ok"  # the probe grant failed: decided locally
            assert breaker.state is State.CLOSED
            await asyncio.sleep(0.1)
            assert shared.metrics()["faults"] > 0
        finally:
            await stop_and_close(shared)

    asyncio.run(main())


def test_sync_call_of_an_asyncio_shared_breaker(redis_server: RedisServer) -> None:
    """A worker thread asks through the client's loop; the loop's own thread decides locally."""

    async def main() -> None:
        shared = await async_state(redis_server.url, "athread").astart()
        breaker = shared.attach(
            resilience.CircuitBreaker(
                "svc", consecutive_failures=1, open_duration=0.05, half_open_max_calls=1
            )
        )
        try:
            breaker.acquire().record_failure()
            await asyncio.sleep(0.1)
            assert shared.grant_probe(breaker) is None  # on the loop: never block it
            probe = await asyncio.to_thread(breaker.acquire)  # granted by Redis via the loop
            assert probe.probe
            # The fleet's only slot is taken: another ask from a thread is refused.
            assert await asyncio.to_thread(shared.grant_probe, breaker) is False
            probe.record_success()
        finally:
            await stop_and_close(shared)

    asyncio.run(main())


def test_client_kinds_and_start_methods() -> None:
    """A wrong client type, or the wrong start method for the client, is a clear error."""
    with pytest.raises(TypeError, match="client="):
        rr.RedisSharedState(client="redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="astart"):
        rr.RedisSharedState(client=redis_lib.asyncio.Redis(port=1)).start()
    with pytest.raises(TypeError, match=r"use start\(\)"):
        asyncio.run(rr.RedisSharedState("redis://127.0.0.1:1/0").astart())
