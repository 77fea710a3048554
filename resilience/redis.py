"""Breakers shared across processes and hosts, through Redis (`resilience[redis]`).

```python
shared = resilience.redis.RedisSharedState("redis://127.0.0.1:6379/0").start()
breaker = shared.attach(resilience.CircuitBreaker("payments", consecutive_failures=5))
```

Design (see docs/guide/redis.md):

- The call path never touches Redis. Each process keeps its breakers local;
  a background thread reads their outcome counters every `flush_interval`
  (or sooner, once `batch_size` outcomes have piled up) and adds them to
  per-second buckets in Redis: one atomic Lua script per breaker, all of
  them in one pipelined round trip.
- The script also decides the *fleet* trip (consecutive failures, failure
  rate over the window) and stores the fleet state; every transition, from
  the script or from any process's own breaker, is published on a pub/sub
  channel, and every process applies it to its local breaker within
  milliseconds.
- Half-open probes are granted by Redis (an atomic counter with an expiry),
  so the fleet sends at most `half_open_max_calls` probes, and a process
  that crashes mid-probe cannot keep the fleet half-open.
- Fail-local: if Redis is down or slow, breakers go on with their local
  state; faults are counted and logged, the thread reconnects with backoff,
  and outcomes seen meanwhile are flushed when Redis is back. No call fails
  or waits because of Redis (a probe grant waits at most `socket_timeout`).
- Clients: a URL or a `redis.Redis` runs the background work on two daemon
  threads (`start()`); a `redis.asyncio.Redis` runs it as two tasks on the
  running event loop (`await astart()`), and async callers await their
  probe grants instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from typing import Any

import redis as redis_lib
import redis.asyncio as aredis

from ._counter import peek
from ._state import State
from ._validate import check_int, check_seconds, check_string
from .breaker import CircuitBreaker
from .events import Event, StateChanged

__all__ = ["RedisSharedState"]

_log = logging.getLogger("resilience.redis")

# KEYS: state, bucket prefix, probes. ARGV: successes, failures, bucket_ms,
# window_buckets, minimum_calls, rate (-1: off), consecutive (-1: off),
# open_ms, ttl_ms, channel, name.
_FLUSH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s, f = tonumber(ARGV[1]), tonumber(ARGV[2])
local bucket_ms, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[9])
local index = math.floor(now / bucket_ms)
if s + f > 0 then
  local key = KEYS[2] .. ':' .. index
  if s > 0 then redis.call('HINCRBY', key, 's', s) end
  if f > 0 then redis.call('HINCRBY', key, 'f', f) end
  redis.call('PEXPIRE', key, ttl)
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local streak = tonumber(redis.call('HGET', KEYS[1], 'streak') or '0')
if s > 0 then streak = 0 end
streak = streak + f
local calls, fails = 0, 0
for i = 0, window - 1 do
  local v = redis.call('HMGET', KEYS[2] .. ':' .. (index - i), 's', 'f')
  local bs, bf = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  calls = calls + bs + bf
  fails = fails + bf
end
local opened = 0
if state ~= 'open' or tonumber(redis.call('HGET', KEYS[1], 'until') or '0') <= now then
  local rate, consecutive = tonumber(ARGV[6]), tonumber(ARGV[7])
  local by_streak = consecutive > 0 and streak >= consecutive
  local by_rate = rate > 0 and calls >= tonumber(ARGV[5]) and calls > 0 and fails / calls >= rate
  if state ~= 'open' and (by_streak or by_rate) then
    local open_ms = tonumber(ARGV[8])
    redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + open_ms, 'streak', 0)
    redis.call('HINCRBY', KEYS[1], 'epoch', 1)
    redis.call('DEL', KEYS[3])
    redis.call('PUBLISH', ARGV[10], cjson.encode({name = ARGV[11], state = 'open',
      open_ms = open_ms, origin = 'redis'}))
    opened = 1
    streak = 0
  end
end
redis.call('HSET', KEYS[1], 'streak', streak)
redis.call('PEXPIRE', KEYS[1], ttl)
return {opened, calls, fails}
"""

# KEYS: state, probes. ARGV: to ('open'|'closed'), open_ms, ttl_ms, channel, name, origin.
_REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local fleet_open = state == 'open' and tonumber(redis.call('HGET', KEYS[1], 'until') or '0') > now
if ARGV[1] == 'open' then
  if fleet_open then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[2]), 'streak', 0)
else
  if state == 'closed' then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'closed', 'streak', 0)
end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], cjson.encode({name = ARGV[5], state = ARGV[1],
  open_ms = tonumber(ARGV[2]), origin = ARGV[6]}))
return 1
"""

# KEYS: probes. ARGV: limit, ttl_ms.
_PROBE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""


class _Attached:
    """One breaker's bookkeeping: outcomes already flushed, transitions to report."""

    __slots__ = ("breaker", "flushed_failures", "flushed_successes")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        calls = breaker.metrics().calls
        self.flushed_successes = calls["success"]
        self.flushed_failures = calls["failure"]


class RedisSharedState:
    """Shares the state of same-named breakers across processes through Redis.

    Args:
        url: A redis URL (`redis://`, `rediss://` for TLS; user and password
            in the URL for auth).
        prefix: Namespace of every key and of the channel.
        flush_interval: Seconds between two flushes of the outcome counters.
        batch_size: Flush sooner once this many outcomes are waiting.
        bucket_seconds: Resolution of the fleet window in Redis.
        socket_timeout: The longest a Redis command may take (probe grants
            wait at most this long; then the breaker decides locally).
        client: A `redis.Redis` to use instead of one built from `url`, or a
            `redis.asyncio.Redis`: then start with `await astart()` from the
            event loop the client belongs to.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "resilience",
        flush_interval: float = 0.05,
        batch_size: int = 100,
        bucket_seconds: float = 1.0,
        socket_timeout: float = 0.05,
        client: Any = None,
    ) -> None:
        self.prefix = check_string(prefix, "prefix")
        self.flush_interval = check_seconds(flush_interval, "flush_interval")
        self.batch_size = check_int(batch_size, "batch_size")
        self.bucket_seconds = check_seconds(bucket_seconds, "bucket_seconds")
        self.socket_timeout = check_seconds(socket_timeout, "socket_timeout")
        if client is None:
            url = check_string(url, "url")
            client = redis_lib.Redis.from_url(
                url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                health_check_interval=0,
            )
        if not isinstance(client, redis_lib.Redis | aredis.Redis):
            raise TypeError(f"client= takes a redis.Redis or redis.asyncio.Redis, got {client!r}")
        # redis-py types sync and asyncio clients as one union; each path knows which it has.
        self._redis: Any = client
        self._is_async = isinstance(client, aredis.Redis)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._awake: asyncio.Event | None = None
        self._flush_script: Any = client.register_script(_FLUSH)
        self._report_script: Any = client.register_script(_REPORT)
        self._probe_script: Any = client.register_script(_PROBE)
        self.channel = f"{self.prefix}:breaker-events"
        #: This process's identity on the channel (its own messages are ignored).
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._attached: dict[str, list[_Attached]] = {}
        self._reports: deque[tuple[str, str, float]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._faults: itertools.count[int] = itertools.count()
        self._flushes: itertools.count[int] = itertools.count()
        self._received: itertools.count[int] = itertools.count()
        self._last_fault_log = 0.0

    # -- wiring --------------------------------------------------------------------

    def attach(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Share `breaker` (by its name) with the fleet; return it."""
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"attach() takes a CircuitBreaker, got {breaker!r}")
        with self._lock:
            self._attached.setdefault(breaker.name, []).append(_Attached(breaker))
        breaker.share(self)
        breaker.events.subscribe(self._on_event)
        return breaker

    def start(self) -> RedisSharedState:
        """Start the flush and subscribe threads (daemons); return self."""
        if self._is_async:
            raise TypeError("an asyncio client runs on its event loop: use `await shared.astart()`")
        for target, name in ((self._flush_loop, "flush"), (self._listen_loop, "listen")):
            thread = threading.Thread(target=target, name=f"resilience-redis-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Flush what is waiting, then stop the threads."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    async def astart(self) -> RedisSharedState:
        """Start the flush and subscribe tasks on the running loop (asyncio client); return self."""
        if not self._is_async:
            raise TypeError("astart() runs a redis.asyncio client; this one is sync: use start()")
        self._loop = asyncio.get_running_loop()
        self._awake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._aflush_loop(), name="resilience-redis-flush"),
            asyncio.create_task(self._alisten_loop(), name="resilience-redis-listen"),
        ]
        return self

    async def astop(self) -> None:
        """Flush what is waiting, then stop the tasks."""
        self._stop.set()
        self._notify()
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- the breaker's question ------------------------------------------------------

    def grant_probe(self, breaker: CircuitBreaker) -> bool | None:
        """Ask Redis for one of the fleet's `half_open_max_calls` probe slots."""
        if self._is_async:
            return self._grant_from_thread(breaker)
        try:
            granted = self._probe_script(**self._probe_request(breaker))
        except redis_lib.RedisError as error:
            self._fault("grant a probe", error)
            return None  # unknown: the breaker decides locally
        return bool(granted)

    async def agrant_probe(self, breaker: CircuitBreaker) -> bool | None:
        """`grant_probe` for async callers; waits at most `socket_timeout`."""
        if not self._is_async or asyncio.get_running_loop() is not self._loop:
            return self.grant_probe(breaker)
        try:
            async with asyncio.timeout(self.socket_timeout):
                granted = await self._probe_script(**self._probe_request(breaker))
        except (redis_lib.RedisError, OSError) as error:
            self._fault("grant a probe", error)
            return None
        return bool(granted)

    def _grant_from_thread(self, breaker: CircuitBreaker) -> bool | None:
        """A sync call of a breaker shared through an asyncio client: ask via its loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        try:
            if asyncio.get_running_loop() is loop:
                return None  # sync code on the loop's own thread: waiting would deadlock it
        except RuntimeError:
            pass
        future = asyncio.run_coroutine_threadsafe(self.agrant_probe(breaker), loop)
        try:
            return future.result(timeout=self.socket_timeout * 2)
        except Exception as error:  # noqa: BLE001  (timeout, loop gone: decide locally)
            future.cancel()
            self._fault("grant a probe", error)
            return None

    def _probe_request(self, breaker: CircuitBreaker) -> dict[str, list[Any]]:
        ttl = breaker.half_open_max_wait or max(breaker.retry_after() or 0.0, 1.0) * 10
        return {
            "keys": [self._key(breaker.name, "probes")],
            "args": [breaker.half_open_max_calls, int(ttl * 1000)],
        }

    # -- background work --------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Local transitions are reported to the fleet (from the flush thread, not here)."""
        if not isinstance(event, StateChanged) or event.reason == "fleet":
            return
        if event.to_state is State.OPEN:
            breakers = self._attached.get(event.name) or []
            open_for = breakers[0].breaker.retry_after() if breakers else None
            self._reports.append((event.name, "open", open_for or 0.0))
        elif event.to_state is State.CLOSED and event.from_state is State.HALF_OPEN:
            self._reports.append((event.name, "closed", 0.0))
        else:
            return
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        loop, awake = self._loop, self._awake
        if loop is not None and awake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(awake.set)

    def _pause(self, backoff: float) -> float:
        """How long a flush loop sleeps unless woken: a report or a full batch cuts it short."""
        return backoff or min(self.flush_interval, self.flush_interval / 5 + 0.001)

    def _due(self, now: float, next_flush: float) -> bool:
        return bool(self._reports) or now >= next_flush or self._batch_ready()

    def _flush_loop(self) -> None:
        backoff = 0.0
        next_flush = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self._pause(backoff))
            self._wake.clear()
            now = time.monotonic()
            if not self._due(now, next_flush):
                continue
            try:
                self._send_reports()
                self._flush()
                next(self._flushes)
                backoff = 0.0
                next_flush = now + self.flush_interval
            except redis_lib.RedisError as error:
                self._fault("flush", error)
                backoff = min(max(backoff * 2, 0.1), 5.0)  # reconnect with backoff
        try:  # a last flush on the way out
            self._send_reports()
            self._flush()
        except redis_lib.RedisError as error:
            self._fault("flush at stop", error)

    def _batch_ready(self) -> bool:
        waiting = 0
        for entries in list(self._attached.values()):
            for entry in entries:
                calls = entry.breaker.metrics().calls
                waiting += calls["success"] - entry.flushed_successes
                waiting += calls["failure"] - entry.flushed_failures
        return waiting >= self.batch_size

    def _send_reports(self) -> None:
        while self._reports:
            self._report_script(**self._report_request(self._reports[0]))
            self._reports.popleft()  # only once sent: a fault keeps it for the next try

    def _report_request(self, report: tuple[str, str, float]) -> dict[str, list[Any]]:
        name, to, open_for = report
        ttl_ms = self._ttl_ms(self._attached[name][0].breaker)
        return {
            "keys": [self._key(name, "state"), self._key(name, "probes")],
            "args": [to, int(open_for * 1000), ttl_ms, self.channel, name, self.origin],
        }

    def _flush(self) -> None:
        """One round trip: a pipeline with one Lua script per shared breaker name."""
        plan = self._flush_plan()
        if not plan:
            return
        pipeline = self._redis.pipeline(transaction=False)
        for *_, request in plan:
            self._flush_script(**request, client=pipeline)
        self._flush_done(plan, pipeline.execute())

    def _flush_plan(self) -> list[tuple[Any, ...]]:
        """Per shared name: the outcomes not yet flushed, and the script call that adds them."""
        plan = []
        for name, entries in list(self._attached.items()):
            breaker = entries[0].breaker
            successes = failures = 0
            snapshots = []
            for entry in entries:
                calls = entry.breaker.metrics().calls
                successes += calls["success"] - entry.flushed_successes
                failures += calls["failure"] - entry.flushed_failures
                snapshots.append((entry, calls["success"], calls["failure"]))
            window = max(int(_window_seconds(breaker) / self.bucket_seconds), 1)
            request = {
                "keys": [
                    self._key(name, "state"),
                    self._key(name, "window"),
                    self._key(name, "probes"),
                ],
                "args": [
                    successes,
                    failures,
                    int(self.bucket_seconds * 1000),
                    window,
                    breaker.minimum_calls,
                    breaker.failure_rate_threshold or -1,
                    breaker.consecutive_failures or -1,
                    int(_open_seconds(breaker) * 1000),
                    self._ttl_ms(breaker),
                    self.channel,
                    name,
                ],
            }
            plan.append((entries, snapshots, breaker, request))
        return plan

    def _flush_done(self, plan: list[tuple[Any, ...]], results: list[Any]) -> None:
        """The flush landed: advance the flushed counts; apply a trip it caused."""
        for (entries, snapshots, breaker, _), (opened, _, _) in zip(plan, results, strict=True):
            for entry, seen_successes, seen_failures in snapshots:  # flushed: advance
                entry.flushed_successes = seen_successes
                entry.flushed_failures = seen_failures
            if opened:
                for entry in entries:  # our own message is ignored: apply it here
                    entry.breaker.apply_remote(State.OPEN, _open_seconds(breaker))

    def _listen_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                backoff = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None:
                        self._apply(message)
            except redis_lib.RedisError as error:
                self._fault("listen", error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(redis_lib.RedisError):
                    pubsub.close()

    # -- the same work on an event loop (redis.asyncio client) -------------------------

    async def _aflush_loop(self) -> None:
        assert self._awake is not None
        backoff = 0.0
        next_flush = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._pause(backoff)):
                    await self._awake.wait()
            self._awake.clear()
            now = time.monotonic()
            if not self._due(now, next_flush):
                continue
            try:
                await self._aflush()
                next(self._flushes)
                backoff = 0.0
                next_flush = now + self.flush_interval
            except (redis_lib.RedisError, OSError) as error:
                self._fault("flush", error)
                backoff = min(max(backoff * 2, 0.1), 5.0)
        try:
            await self._aflush()
        except (redis_lib.RedisError, OSError) as error:
            self._fault("flush at stop", error)

    async def _aflush(self) -> None:
        """`_send_reports` then `_flush`, awaited."""
        while self._reports:
            await self._report_script(**self._report_request(self._reports[0]))
            self._reports.popleft()
        plan = self._flush_plan()
        if not plan:
            return
        pipeline = self._redis.pipeline(transaction=False)
        for *_, request in plan:
            await self._flush_script(**request, client=pipeline)
        self._flush_done(plan, await pipeline.execute())

    async def _alisten_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                backoff = 0.1
                while not self._stop.is_set():
                    message = await pubsub.get_message(timeout=0.1)
                    if message is not None:
                        self._apply(message)
            except (redis_lib.RedisError, OSError) as error:
                self._fault("listen", error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(redis_lib.RedisError, OSError):
                    await pubsub.aclose()

    def _apply(self, message: dict[str, Any]) -> None:
        try:
            data = json.loads(message["data"])
            name, to, origin = data["name"], data["state"], data["origin"]
            open_for = float(data.get("open_ms") or 0) / 1000
        except (ValueError, KeyError, TypeError):
            return  # not ours, or garbage on the channel
        if origin == self.origin:
            return
        next(self._received)
        for entry in list(self._attached.get(name, ())):
            if to == "open":
                entry.breaker.apply_remote(State.OPEN, open_for or None)
            elif to == "closed":
                entry.breaker.apply_remote(State.CLOSED)

    # -- helpers ----------------------------------------------------------------------

    def _key(self, name: str, part: str) -> str:
        return f"{self.prefix}:breaker:{name}:{part}"

    def _ttl_ms(self, breaker: CircuitBreaker) -> int:
        # Every key expires: a window and an open period past the last write.
        return int((_window_seconds(breaker) + _open_seconds(breaker) + 60) * 1000)

    def _fault(self, what: str, error: Exception) -> None:
        next(self._faults)
        now = time.monotonic()
        if now - self._last_fault_log >= 10:  # at most one line per 10 s
            self._last_fault_log = now
            _log.warning("redis unavailable (%s: %s); breakers run on local state", what, error)

    def metrics(self) -> dict[str, int]:
        """Flushes done, Redis faults, and transitions received from other processes."""
        return {
            "flushes": peek(self._flushes),
            "faults": peek(self._faults),
            "received": peek(self._received),
        }


def _window_seconds(breaker: CircuitBreaker) -> float:
    window = breaker.window
    return float(getattr(window, "seconds", 0.0) or 60.0)


def _open_seconds(breaker: CircuitBreaker) -> float:
    return float(breaker._open_duration(max(breaker.metrics().openings, 0) + 1))
