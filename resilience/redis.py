"""Breakers shared across processes and hosts, through Redis (`resilience[redis]`).

```python
shared = resilience.redis.RedisSharedState("redis://127.0.0.1:6379/0").start()
breaker = shared.attach(resilience.CircuitBreaker("payments", consecutive_failures=5))
```

The protocol (what Redis holds, who changes it, what a process does on
attach, resubscribe, fault and return, and the invariants the tests check)
is written down in docs/guide/redis.md, section "Protocol"; this module
follows it. In short:

- The call path never touches Redis, except to ask for a half-open probe
  slot. A background thread (or two asyncio tasks) sends, every
  `flush_interval`, one pipelined round trip: the transitions this process
  decided, the outcomes of its fleet probes, and per breaker name the
  outcomes that entered its windows. Every script answers with the fleet
  state, which the process applies (so a lost pub/sub message costs at
  most one flush interval); pub/sub brings transitions within milliseconds.
- The fleet trips on the failure rate of its pooled window; the
  consecutive-failure and slow-call rules are each process's own, and a
  local trip opens the fleet.
- Half-open is decided fleet-wide: `half_open_max_calls` probe slots per
  fleet open period, each returned when its probe settles in any way, and
  one decision from their outcomes.
- Fail-local: if Redis is down or slow, breakers go on with their local
  state; no call fails or waits longer than `socket_timeout` because of it.
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
from typing import TYPE_CHECKING, Any

import redis as redis_lib
import redis.asyncio as aredis

from ._counter import peek
from ._outcome import Outcome
from ._state import State
from ._validate import check_int, check_seconds, check_string
from .breaker import CircuitBreaker

if TYPE_CHECKING:
    from ._clock import Clock
    from .events import StateChanged

__all__ = ["RedisSharedState"]

_log = logging.getLogger("resilience.redis")

#: Open durations sent to Redis, for consecutive fleet openings 1.._OPENINGS (then the last).
_OPENINGS = 32
#: A fleet stays open at most this long per opening (seconds): keys need a finite TTL.
_LONGEST_OPEN = 86_400.0
#: The most buckets a fleet window may have (each flush with outcomes reads them all).
_MOST_BUCKETS = 600

_PRELUDE = """
local S, SLOTS, WINDOW = KEYS[1], KEYS[2], KEYS[3]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local N, ttl = tonumber(ARGV[4]), tonumber(ARGV[12])

local function num(field)
  return tonumber(redis.call('HGET', S, field) or '0')
end

local function known()
  return redis.call('EXISTS', S) == 1 and redis.call('HGET', S, 'config') == ARGV[2]
end

local function ensure()
  if redis.call('EXISTS', S) == 0 then
    redis.call('HSET', S, 'inc', now .. '-' .. ARGV[16], 'epoch', 0, 'state', 'closed',
      'until', 0, 'openings', 0, 'ok', 0, 'fail', 0, 'slow', 0, 'config', ARGV[2])
    redis.call('DEL', SLOTS)
  elseif redis.call('HGET', S, 'config') ~= ARGV[2] then
    return false
  end
  redis.call('PEXPIRE', S, ttl)
  return true
end

local function status(code)
  local v = redis.call('HMGET', S, 'inc', 'epoch', 'state', 'until', 'openings', 'ok', 'fail')
  local phase, remaining, free = v[3], 0, 0
  if phase == 'open' then
    remaining = math.max(tonumber(v[4]) - now, 0)
    if remaining == 0 then
      phase = 'half_open'
      free = math.max(N - redis.call('ZCARD', SLOTS) - tonumber(v[6]) - tonumber(v[7]), 0)
    end
  end
  return {code, v[1], tonumber(v[2]), phase, remaining, tonumber(v[5]), free}
end

local function transition(to, reason, open_ms)
  if to == 'open' then
    local openings = num('openings') + 1
    if open_ms == nil or open_ms < 0 then
      local durations = cjson.decode(ARGV[3])
      open_ms = durations[math.min(openings, #durations)]
    end
    redis.call('HSET', S, 'state', 'open', 'until', now + open_ms, 'openings', openings)
  else
    redis.call('HSET', S, 'state', 'closed', 'until', 0, 'openings', 0)
    local index = math.floor(now / tonumber(ARGV[11]))
    for i = 0, tonumber(ARGV[10]) - 1 do redis.call('DEL', WINDOW .. ':' .. (index - i)) end
  end
  redis.call('HINCRBY', S, 'epoch', 1)
  redis.call('HSET', S, 'ok', 0, 'fail', 0, 'slow', 0, 'reason', reason)
  redis.call('DEL', SLOTS)
  local s = status('event')
  redis.call('PUBLISH', ARGV[13], cjson.encode({name = ARGV[14], origin = ARGV[15],
    inc = s[2], epoch = s[3], phase = s[4], remaining = s[5], openings = s[6],
    reason = reason}))
end

-- A probe slot past its lease: the fleet reopens (half_open_max_wait) or frees it.
local function expire_slots()
  if redis.call('HGET', S, 'state') ~= 'open' then return end
  if #redis.call('ZRANGEBYSCORE', SLOTS, '-inf', now, 'LIMIT', 0, 1) == 0 then return end
  if tonumber(ARGV[5]) >= 0 then
    transition('open', 'half_open_max_wait')
  else
    redis.call('ZREMRANGEBYSCORE', SLOTS, '-inf', now)
  end
end
"""

# ARGV 17, 18: successes, failures that entered this process's windows since its last flush;
# 19: the fleet incarnation this process knows; 20: its breaker's open milliseconds left
# (-1: not open). A record Redis lost and nobody has changed since takes the open state.
# 21: the batch id: a batch sent again (its reply was lost) is not added twice.
_FLUSH = (
    _PRELUDE
    + """
if not ensure() then return {'mismatch', redis.call('HGET', S, 'config')} end
local open_ms = tonumber(ARGV[20])
if open_ms >= 0 and redis.call('HGET', S, 'inc') ~= ARGV[19] and num('epoch') == 0 then
  transition('open', 'fleet_restored', open_ms)
end
local s, f = tonumber(ARGV[17]), tonumber(ARGV[18])
local index = math.floor(now / tonumber(ARGV[11]))
if s + f > 0 and redis.call('HGET', S, 'b:' .. ARGV[15]) == ARGV[21] then
  s, f = 0, 0
end
if s + f > 0 then
  redis.call('HSET', S, 'b:' .. ARGV[15], ARGV[21])
  local key = WINDOW .. ':' .. index
  if s > 0 then redis.call('HINCRBY', key, 's', s) end
  if f > 0 then redis.call('HINCRBY', key, 'f', f) end
  redis.call('PEXPIRE', key, ttl)
end
expire_slots()
local rate = tonumber(ARGV[7])
if rate > 0 and s + f > 0 and redis.call('HGET', S, 'state') == 'closed' then
  local calls, fails = 0, 0
  for i = 0, tonumber(ARGV[10]) - 1 do
    local v = redis.call('HMGET', WINDOW .. ':' .. (index - i), 's', 'f')
    local bf = tonumber(v[2] or '0')
    calls = calls + tonumber(v[1] or '0') + bf
    fails = fails + bf
  end
  if calls >= tonumber(ARGV[8]) and calls > 0 and fails / calls >= rate then
    transition('open', 'failure_rate')
  end
end
return status('ok')
"""
)

# ARGV 17: 'open' | 'closed'; 18, 19: the fleet (incarnation, epoch) the reporter knew;
# 20: open milliseconds (-1: the fleet's own open_duration); 21: reason; 22: the report id,
# 23: the reporting breaker (a report sent again because its reply was lost is applied once).
_REPORT = (
    _PRELUDE
    + """
if not ensure() then return {'mismatch', redis.call('HGET', S, 'config')} end
expire_slots()
local report = 'r:' .. ARGV[15] .. ':' .. ARGV[23]
if redis.call('HGET', S, report) == ARGV[22] then return status('ok') end
redis.call('HSET', S, report, ARGV[22])
local state = redis.call('HGET', S, 'state')
if ARGV[17] == 'open' then
  if state ~= 'open' then transition('open', ARGV[21], tonumber(ARGV[20])) end
elseif state == 'open' and redis.call('HGET', S, 'inc') == ARGV[18]
    and num('epoch') == tonumber(ARGV[19]) then
  transition('closed', ARGV[21])
end
return status('ok')
"""
)

# ARGV 17: slot id; 18, 19: the fleet (incarnation, epoch) the asker knows.
_PROBE = (
    _PRELUDE
    + """
if not known() then return {'unknown'} end
expire_slots()
local v = redis.call('HMGET', S, 'state', 'until', 'inc', 'epoch', 'ok', 'fail')
if v[1] == 'closed' then
  if v[3] == ARGV[18] and tonumber(v[4]) > tonumber(ARGV[19]) then return status('closed') end
  return {'unknown'}
end
if tonumber(v[2]) > now then return status('open') end
if redis.call('ZCARD', SLOTS) + tonumber(v[5]) + tonumber(v[6]) >= N then
  return status('full')
end
local lease = tonumber(ARGV[5])
if lease < 0 then lease = tonumber(ARGV[6]) end
redis.call('ZADD', SLOTS, now + lease, ARGV[17])
redis.call('PEXPIRE', SLOTS, ttl)
return status('granted')
"""
)

# ARGV 17: slot id; 18, 19: the fleet (incarnation, epoch) of the grant;
# 20: 's' | 'f' | 'i' (returned unused); 21: '1' if the probe was slow.
_SETTLE = (
    _PRELUDE
    + """
if not known() then return {'unknown'} end
local removed = redis.call('ZREM', SLOTS, ARGV[17])
local v = redis.call('HMGET', S, 'inc', 'epoch', 'state')
if removed == 1 and ARGV[20] ~= 'i' and v[1] == ARGV[18]
    and tonumber(v[2]) == tonumber(ARGV[19]) and v[3] == 'open' then
  if ARGV[20] == 's' then redis.call('HINCRBY', S, 'ok', 1)
  else redis.call('HINCRBY', S, 'fail', 1) end
  if ARGV[21] == '1' then redis.call('HINCRBY', S, 'slow', 1) end
  local ok, fail = num('ok'), num('fail')
  local calls = ok + fail
  if calls >= N then
    local rate, slow_rate = tonumber(ARGV[7]), tonumber(ARGV[9])
    local failed
    if rate < 0 then failed = fail > 0 else failed = fail / calls >= rate end
    if failed then
      transition('open', 'probes_failed')
    elseif slow_rate >= 0 and num('slow') / calls >= slow_rate then
      transition('open', 'probes_slow')
    else
      transition('closed', 'probes_succeeded')
    end
  end
end
expire_slots()
return status('ok')
"""
)


_OUTCOME_CODES = {Outcome.SUCCESS: "s", Outcome.FAILURE: "f", Outcome.IGNORED: "i"}


class _Grant:
    """A fleet probe slot: which slot, in which fleet (incarnation, epoch)."""

    __slots__ = ("epoch", "incarnation", "name", "slot")

    def __init__(self, name: str, slot: str, incarnation: str, epoch: int) -> None:
        self.name = name
        self.slot = slot
        self.incarnation = incarnation
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"<fleet probe {self.name!r} epoch={self.epoch}>"


class _Handoff:
    """A grant asked for by a thread through the event loop: delivered or abandoned, once."""

    __slots__ = ("_lock", "_state", "slot")

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self._lock = threading.Lock()
        self._state = "waiting"

    def deliver(self) -> bool:
        """The coroutine has an answer: False if the thread gave up (then it keeps none)."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "delivered"
            return True

    def abandon(self) -> bool:
        """The thread gives up: False if the answer was already delivered."""
        with self._lock:
            if self._state == "delivered":
                return False
            self._state = "abandoned"
            return True


class _Member:
    """One attached breaker and the window outcomes of it already flushed."""

    __slots__ = ("breaker", "flushed_failures", "flushed_successes", "opened_here")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        #: Its breaker opened on a local decision (not the fleet's): the fleet's
        #: answers may lengthen that open period, never shorten it.
        self.opened_here = False
        self.flushed_successes, self.flushed_failures = breaker.window_totals()


class _Fleet:
    """This process's view of one shared breaker name."""

    __slots__ = ("args", "config", "known", "members", "mismatched", "name", "pending")

    def __init__(self, name: str, config: str, args: list[Any]) -> None:
        self.name = name
        self.config = config
        self.args = args
        self.members: list[_Member] = []
        #: The newest fleet (incarnation, epoch) applied here, or None.
        self.known: tuple[str, int] | None = None
        #: The fleet's settings when they differ from ours (we then run locally).
        self.mismatched: str | None = None
        #: The batch of outcomes sent and not yet acknowledged: (id, successes,
        #: failures, what each member had then); sent again, as is, until it is.
        self.pending: tuple[str, int, int, list[tuple[_Member, int, int]]] | None = None


class RedisSharedState:
    """Shares the state of same-named breakers across processes through Redis.

    Args:
        url: A redis URL (`redis://`, `rediss://` for TLS; user and password
            in the URL for auth).
        prefix: Namespace of every key and of the channel.
        flush_interval: Seconds between two flushes (outcomes out, fleet
            state in); also the retry interval while Redis is unreachable.
        batch_size: Flush sooner once this many outcomes are waiting.
        bucket_seconds: Resolution of the fleet window in Redis.
        socket_timeout: The longest a Redis command may take (probe grants
            wait at most this long; then the breaker decides locally).
        client: A `redis.Redis` to use instead of one built from `url`, or a
            `redis.asyncio.Redis`: then start with `await astart()` from the
            event loop the client belongs to.
        clock: Tests only: fleet time from this clock (every member must
            share it) instead of the Redis server's `TIME`.
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
        clock: Clock | None = None,
    ) -> None:
        self.prefix = check_string(prefix, "prefix")
        self.flush_interval = check_seconds(flush_interval, "flush_interval")
        self.batch_size = check_int(batch_size, "batch_size")
        self.bucket_seconds = check_seconds(bucket_seconds, "bucket_seconds")
        self.socket_timeout = check_seconds(socket_timeout, "socket_timeout")
        if clock is not None and not callable(getattr(clock, "monotonic", None)):
            raise TypeError(f"clock= must have a monotonic() method, got {clock!r}")
        self._clock = clock
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
        _check_client(client, self.socket_timeout)
        # redis-py types sync and asyncio clients as one union; each path knows which it has.
        self._redis: Any = client
        self._is_async = isinstance(client, aredis.Redis)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._awake: asyncio.Event | None = None
        self._flush_script: Any = client.register_script(_FLUSH)
        self._report_script: Any = client.register_script(_REPORT)
        self._probe_script: Any = client.register_script(_PROBE)
        self._settle_script: Any = client.register_script(_SETTLE)
        self._scripts = (
            self._flush_script,
            self._report_script,
            self._probe_script,
            self._settle_script,
        )
        self._scripts_loaded = False
        self.channel = f"{self.prefix}:breaker-events"
        #: This process's identity on the channel.
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._observing = threading.RLock()  # an observer of a transition may call the breaker
        self._fleets: dict[str, _Fleet] = {}
        # (name, to, breaker, reason, known, report id) and (name, grant, outcome code,
        # slow): sent in order by the flush loop; kept until Redis has them. Only a
        # breaker's latest report is kept: an older one says what it no longer holds.
        self._reports: deque[tuple[str, str, CircuitBreaker, str, tuple[str, int] | None, str]] = (
            deque()
        )
        self._resync = False
        self._settles: deque[tuple[str, _Grant, str, bool]] = deque()
        self._slots = itertools.count()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._faults: itertools.count[int] = itertools.count()
        self._flushes: itertools.count[int] = itertools.count()
        self._received: itertools.count[int] = itertools.count()
        self._subscriptions: itertools.count[int] = itertools.count()
        self._last_fault_log = 0.0

    # -- wiring --------------------------------------------------------------------

    def attach(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Share `breaker` (by its name) with the fleet; return it.

        Every breaker of one name, in this process and the others, must have
        the same settings; a process whose settings differ from the fleet's
        runs that breaker locally and logs an error (see the guide).
        """
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"attach() takes a CircuitBreaker, got {breaker!r}")
        if breaker._shared is not None and breaker._shared is not self:
            raise ValueError(
                f"breaker {breaker.name!r} is already shared through another backend: "
                "a breaker belongs to one fleet"
            )
        config, args = self._fleet_args(breaker)
        with self._lock:
            fleet = self._fleets.get(breaker.name)
            if fleet is None:
                fleet = self._fleets[breaker.name] = _Fleet(breaker.name, config, args)
            elif fleet.config != config:
                raise ValueError(
                    f"breaker {breaker.name!r} is already attached here with other settings "
                    f"({fleet.config} != {config}): same-named breakers must agree"
                )
            if any(member.breaker is breaker for member in fleet.members):
                return breaker
            fleet.members.append(_Member(breaker))
            breaker.share(self)
        self._resync = True
        self._notify()  # learn the fleet's state now (an open fleet rejects at once)
        return breaker

    def start(self) -> RedisSharedState:
        """Start the flush and subscribe threads (daemons); return self."""
        if self._is_async:
            raise TypeError("an asyncio client runs on its event loop: use `await shared.astart()`")
        if any(thread.is_alive() for thread in self._threads):
            return self  # already running
        self._stop.clear()
        for target, name in ((self._flush_loop, "flush"), (self._listen_loop, "listen")):
            thread = threading.Thread(target=target, name=f"resilience-redis-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Flush what is waiting and stop the threads; until `start()`, probes are local.

        The breakers stay attached: a fleet probe still running reports its
        outcome when the backend starts again (or its slot's lease runs out).
        """
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._stopped()

    def _stopped(self) -> None:
        """Stopped: probes are decided locally (no grants); outcomes and reports wait here."""
        for fleet in list(self._fleets.values()):
            for member in fleet.members:
                member.breaker.probe_slots_free()

    async def astart(self) -> RedisSharedState:
        """Start the flush and subscribe tasks on the running loop (asyncio client); return self."""
        if not self._is_async:
            raise TypeError("astart() runs a redis.asyncio client; this one is sync: use start()")
        if any(not task.done() for task in self._tasks):
            return self  # already running
        self._stop.clear()
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
        self._stopped()

    # -- the breaker's questions ----------------------------------------------------

    def grant_probe(self, breaker: CircuitBreaker) -> object:
        """Ask Redis for one of the fleet's `half_open_max_calls` probe slots.

        Returns a fleet slot, False (none free, or the fleet is still open),
        True (the fleet has closed: the call goes ahead), or None (unknown:
        the breaker decides locally).
        """
        if self._is_async:
            return self._grant_from_thread(breaker)
        request = self._probe_request(breaker)
        if request is None:
            return None
        try:
            reply = self._probe_script(**request[1])
        except redis_lib.RedisError as error:
            self._return_slot(breaker.name, request[0])
            self._fault("grant a probe", error)
            return None  # unknown: the breaker decides locally
        except BaseException:
            self._return_slot(breaker.name, request[0])
            raise
        return self._granted(breaker.name, request[0], reply)

    async def agrant_probe(self, breaker: CircuitBreaker) -> object:
        """`grant_probe` for async callers; waits at most `socket_timeout`."""
        if not self._is_async or asyncio.get_running_loop() is not self._loop:
            return self.grant_probe(breaker)
        return await self._agrant(breaker, None)

    async def _agrant(self, breaker: CircuitBreaker, handoff: _Handoff | None) -> object:
        request = self._probe_request(breaker, None if handoff is None else handoff.slot)
        if request is None:
            return None
        try:
            async with asyncio.timeout(self.socket_timeout):
                reply = await self._probe_script(**request[1])
        except (redis_lib.RedisError, OSError) as error:
            self._return_slot(breaker.name, request[0])
            self._fault("grant a probe", error)
            return None
        except BaseException:  # cancelled: Redis may have granted it; give it back
            self._return_slot(breaker.name, request[0])
            raise
        answer = self._granted(breaker.name, request[0], reply)
        if handoff is not None and not handoff.deliver():
            # The thread that asked stopped waiting: nobody will use or settle this slot.
            self._return_slot(breaker.name, request[0])
            return None
        return answer

    def _grant_from_thread(self, breaker: CircuitBreaker) -> object:
        """A sync call of a breaker shared through an asyncio client: ask via its loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        try:
            if asyncio.get_running_loop() is loop:
                return None  # sync code on the loop's own thread: waiting would deadlock it
        except RuntimeError:
            pass
        handoff = _Handoff(f"{self.origin}-{next(self._slots)}")
        future = asyncio.run_coroutine_threadsafe(self._agrant(breaker, handoff), loop)
        try:
            return future.result(timeout=self.socket_timeout * 2)
        except Exception as error:  # noqa: BLE001  (timeout, loop gone: decide locally)
            if not handoff.abandon():  # the answer was handed over just now: it is ours
                with contextlib.suppress(Exception):
                    return future.result(timeout=self.socket_timeout)
            future.cancel()  # the coroutine returns the slot if it gets one
            self._fault("grant a probe", error)
            return None

    def probe_settled(
        self, breaker: CircuitBreaker, grant: object, outcome: Outcome, slow: bool
    ) -> None:
        """A fleet probe settled: its outcome (or its unused slot) goes to Redis next flush."""
        if not isinstance(grant, _Grant):
            return
        self._settles.append((grant.name, grant, _OUTCOME_CODES[outcome], slow))
        self._notify()

    def _probe_request(
        self, breaker: CircuitBreaker, slot: str | None = None
    ) -> tuple[str, dict[str, Any]] | None:
        fleet = self._fleets.get(breaker.name)
        if fleet is None or fleet.mismatched is not None or self._stop.is_set():
            return None  # decided locally
        if slot is None:
            slot = f"{self.origin}-{next(self._slots)}"
        incarnation, epoch = fleet.known or ("", -1)
        return slot, self._request(fleet, slot, incarnation, epoch)

    def _granted(self, name: str, slot: str, reply: list[Any]) -> object:
        """Turn the probe script's answer into the breaker's answer."""
        status = _decode(reply)
        fleet = self._fleets.get(name)
        code = status[0]
        if fleet is None or code == "unknown":
            return None
        if code == "granted":
            # Our local half-open is the fleet's: note its epoch, change nothing.
            with self._observing:
                fleet.known = max(fleet.known or ("", -1), (status[1], status[2]), key=_order)
            return _Grant(name, slot, status[1], status[2])
        self._observe(fleet, status)
        return code == "closed"  # closed: the call goes ahead; full or open: refused

    def _return_slot(self, name: str, slot: str) -> None:
        """A grant that may have been made but never reached its caller: hand it back."""
        self._settles.append((name, _Grant(name, slot, "", -1), "i", False))
        self._notify()

    # -- what the process tells the fleet ----------------------------------------------

    def state_changed(self, breaker: CircuitBreaker, event: StateChanged) -> None:
        """Local transitions are reported to the fleet (from the flush loop, not here)."""
        if event.reason == "fleet":
            return
        fleet = self._fleets.get(event.name)
        if fleet is None:
            return
        if event.to_state is State.OPEN:
            to = "open"
        elif event.to_state is State.CLOSED and event.from_state is State.HALF_OPEN:
            to = "closed"
        else:
            return
        for member in fleet.members:
            if member.breaker is breaker:
                member.opened_here = to == "open"
        report_id = f"{next(self._slots)}"
        with self._lock:
            for queued in [report for report in self._reports if report[2] is breaker]:
                self._reports.remove(queued)
            self._reports.append((event.name, to, breaker, event.reason, fleet.known, report_id))
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        loop, awake = self._loop, self._awake
        if loop is not None and awake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(awake.set)

    # -- one flush: everything in one pipelined round trip ---------------------------

    def _plan(self) -> list[tuple[Any, dict[str, Any], Any]]:
        """The commands of one flush: (script, request, what to do with its answer)."""
        commands: list[tuple[Any, dict[str, Any], Any]] = []
        with self._lock:
            reports, settles = list(self._reports), list(self._settles)
        for report in reports:
            name, to, breaker, reason, known, report_id = report
            fleet = self._fleets[name]
            if to == "closed" and breaker.state is not State.CLOSED:
                # The fleet moved it since (a newer epoch applied): the report is stale.
                with self._lock, contextlib.suppress(ValueError):
                    self._reports.remove(report)
                continue
            incarnation, epoch = known or ("", -1)
            open_ms = _open_ms_of(breaker) if to == "open" else -1
            if to == "open" and open_ms < 0:
                open_ms = 0  # closed since by an operator: the fleet decides by its probes
            request = self._request(
                fleet, to, incarnation, epoch, open_ms, reason, report_id, f"{id(breaker):x}"
            )
            commands.append((self._report_script, request, (self._reports, report, fleet)))
        for settle in settles:
            name, grant, code, slow = settle
            fleet = self._fleets[name]
            request = self._request(
                fleet, grant.slot, grant.incarnation, grant.epoch, code, "1" if slow else "0"
            )
            commands.append((self._settle_script, request, (self._settles, settle, fleet)))
        for fleet in list(self._fleets.values()):
            if fleet.pending is None:
                successes = failures = 0
                seen = []
                for member in fleet.members:
                    total_s, total_f = member.breaker.window_totals()
                    successes += total_s - member.flushed_successes
                    failures += total_f - member.flushed_failures
                    seen.append((member, total_s, total_f))
                fleet.pending = (f"{next(self._slots)}", successes, failures, seen)
            batch, successes, failures, _ = fleet.pending
            incarnation = fleet.known[0] if fleet.known else ""
            request = self._request(fleet, successes, failures, incarnation, _open_ms(fleet), batch)
            commands.append((self._flush_script, request, (None, fleet.pending, fleet)))
        return commands

    def _done(self, commands: list[tuple[Any, dict[str, Any], Any]], replies: list[Any]) -> None:
        """The flush landed: drop what was sent, advance the flushed counts, apply the fleet.

        A script that failed in Redis (a record edited by hand, say) is logged
        and counted as a fault, and its item is dropped rather than sent again
        every flush; an item Redis could not take now (busy, read-only, a
        script it no longer knows) is sent again at the next flush.
        """
        for (_, _, (queue, item, fleet)), reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception) and not _fails_again(reply):
                # Redis could not run it now (busy, read-only, restarted): send it again.
                if isinstance(reply, redis_lib.exceptions.NoScriptError):
                    self._scripts_loaded = False
                else:
                    self._fault(f"breaker {fleet.name!r}", reply)
                continue
            if queue is not None:
                with self._lock, contextlib.suppress(ValueError):
                    queue.remove(item)
            elif fleet.pending is item:
                fleet.pending = None
                for member, total_s, total_f in item[3]:
                    member.flushed_successes, member.flushed_failures = total_s, total_f
            if isinstance(reply, Exception):
                self._fault(f"breaker {fleet.name!r}", reply)
                continue
            self._observe(fleet, _decode(reply))
        self._resync = False
        next(self._flushes)

    def _pipeline(self, pipeline: Any, commands: list[tuple[Any, dict[str, Any], Any]]) -> None:
        for script, request, _ in commands:
            keys, args = request["keys"], request["args"]
            pipeline.evalsha(script.sha, len(keys), *keys, *args)

    def _cycle(self) -> None:
        """One flush over a sync client: one round trip (raises RedisError on a fault)."""
        if not self._scripts_loaded:
            for script in self._scripts:
                self._redis.script_load(script.script)
            self._scripts_loaded = True
        commands = self._plan()
        if not commands:
            return
        with self._redis.pipeline(transaction=False) as pipeline:
            self._pipeline(pipeline, commands)
            replies = pipeline.execute(raise_on_error=False)
        self._done(commands, replies)

    async def _acycle(self) -> None:
        """`_cycle` over an asyncio client."""
        if not self._scripts_loaded:
            for script in self._scripts:
                await self._redis.script_load(script.script)
            self._scripts_loaded = True
        commands = self._plan()
        if not commands:
            return
        async with self._redis.pipeline(transaction=False) as pipeline:
            self._pipeline(pipeline, commands)
            replies = await pipeline.execute(raise_on_error=False)
        self._done(commands, replies)

    # -- what the fleet tells the process --------------------------------------------

    def _observe(self, fleet: _Fleet, status: list[Any]) -> None:
        """Apply a fleet state (a script's answer or a pub/sub message) to the local breakers.

        The flush and listen threads both apply states: one at a time, so an
        older state read before a newer one was applied never wins.
        """
        with self._observing:
            try:
                self._observe_locked(fleet, status)
            except (ValueError, TypeError, IndexError) as error:  # a record edited by hand
                self._fault(f"breaker {fleet.name!r}: unreadable fleet state {status!r}", error)

    def _observe_locked(self, fleet: _Fleet, status: list[Any]) -> None:
        code = status[0]
        if code == "unknown" or (code == "event" and fleet.mismatched is not None):
            return  # a member with other settings follows no fleet state
        if code == "mismatch":
            if fleet.mismatched is None:
                _log.error(
                    "breaker %r: this process's settings differ from the fleet's "
                    "(fleet: %s; here: %s); it runs on local state until they agree",
                    fleet.name,
                    status[1],
                    fleet.config,
                )
            fleet.mismatched = str(status[1])
            return
        _, incarnation, epoch, phase, remaining_ms, openings, free = status
        if not isinstance(incarnation, str) or phase not in ("closed", "open", "half_open"):
            raise ValueError("not a fleet state")
        epoch, remaining_ms, openings, free = (
            int(epoch),
            int(remaining_ms),
            int(openings),
            int(free),
        )
        fleet.mismatched = None
        known = fleet.known
        if known is not None and incarnation != known[0] and _older(incarnation, known[0]):
            return  # a late message from before Redis lost its state
        fresh = known is None or incarnation != known[0] or epoch > known[1]
        if fresh:
            fleet.known = (incarnation, epoch)
        elif known is not None and epoch < known[1]:
            return  # an older epoch (a delayed message)
        for member in fleet.members:
            breaker = member.breaker
            state = breaker.state
            if fresh:
                member.opened_here = False
            if phase == "closed":
                if fresh:
                    breaker.apply_remote(State.CLOSED)
            elif (
                fresh
                # The same fleet period: an open breaker follows its end, but one opened
                # by a local decision (a failed local probe) only to a later end.
                or (
                    state is State.OPEN
                    and (
                        not member.opened_here or remaining_ms / 1000 > (breaker.retry_after() or 0)
                    )
                )
                or (phase == "open" and state is State.HALF_OPEN)
            ):
                breaker.apply_remote(State.OPEN, remaining_ms / 1000, openings=openings)
            if phase == "half_open" and free > 0:
                breaker.probe_slots_free()

    def _apply(self, message: dict[str, Any]) -> None:
        """A pub/sub message: the same fleet state a script answers with."""
        try:
            data = json.loads(message["data"])
            status = [
                "event",
                str(data["inc"]),
                int(data["epoch"]),
                str(data["phase"]),
                int(data["remaining"]),
                int(data["openings"]),
                0,
            ]
            fleet = self._fleets.get(data["name"])
        except (ValueError, KeyError, TypeError, OverflowError):
            return  # not ours, or garbage on the channel
        if fleet is None or status[3] not in ("closed", "open", "half_open"):
            return
        next(self._received)
        self._observe(fleet, status)

    # -- background work --------------------------------------------------------------

    def _pause(self, backoff: float) -> float:
        """How long a flush loop sleeps unless woken: a report or a full batch cuts it short."""
        return backoff or min(self.flush_interval, self.flush_interval / 5 + 0.001)

    def _due(self, now: float, next_flush: float) -> bool:
        return (
            self._resync
            or bool(self._reports or self._settles)
            or now >= next_flush
            or self._batch_ready()
        )

    def _batch_ready(self) -> bool:
        """A full batch is waiting, or a failure: the fleet hears of failures within a tick."""
        waiting = 0
        for fleet in list(self._fleets.values()):
            for member in fleet.members:
                successes, failures = member.breaker.window_totals()
                if failures > member.flushed_failures:
                    return True
                waiting += successes - member.flushed_successes
        return waiting >= self.batch_size

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
                self._cycle()
                backoff = 0.0
                next_flush = now + self.flush_interval
            except Exception as error:  # noqa: BLE001  (the background work never dies)
                self._fault("flush", error)
                backoff = self.flush_interval  # try again next interval: rejoin quickly
        try:  # a last flush on the way out
            self._cycle()
        except Exception as error:  # noqa: BLE001
            self._fault("flush at stop", error)

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self._subscribed()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None:
                        self._apply(message)
            except Exception as error:  # noqa: BLE001
                self._fault("listen", error)
                self._stop.wait(self.flush_interval)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _subscribed(self) -> None:
        """(Re)subscribed: what was published meanwhile is lost, so read the fleet now."""
        next(self._subscriptions)
        self._resync = True
        self._notify()

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
                await self._acycle()
                backoff = 0.0
                next_flush = now + self.flush_interval
            except Exception as error:  # noqa: BLE001
                self._fault("flush", error)
                backoff = self.flush_interval
        try:
            await self._acycle()
        except Exception as error:  # noqa: BLE001
            self._fault("flush at stop", error)

    async def _alisten_loop(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed()
                while not self._stop.is_set():
                    message = await pubsub.get_message(timeout=0.1)
                    if message is not None:
                        self._apply(message)
            except Exception as error:  # noqa: BLE001
                self._fault("listen", error)
                await asyncio.sleep(self.flush_interval)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # -- helpers ----------------------------------------------------------------------

    def _key(self, name: str, part: str) -> str:
        return f"{self.prefix}:breaker:{name}:{part}"

    def _fleet_args(self, breaker: CircuitBreaker) -> tuple[str, list[Any]]:
        """The settings every member must share, and the script arguments they make."""
        durations = [
            int(min(breaker._open_duration(openings), _LONGEST_OPEN) * 1000)
            for openings in range(1, _OPENINGS + 1)
        ]
        window_seconds = float(getattr(breaker.window, "seconds", 0.0) or 60.0)
        if window_seconds / self.bucket_seconds > _MOST_BUCKETS:
            raise ValueError(
                f"breaker {breaker.name!r}: a {window_seconds:g} s window in "
                f"bucket_seconds={self.bucket_seconds:g} buckets is more than {_MOST_BUCKETS} "
                "buckets for Redis to sum on every flush: raise bucket_seconds"
            )
        max_wait = breaker.half_open_max_wait
        # A probe that never reports (its process died) holds its slot this long.
        lease = max_wait if max_wait is not None else min(max(10 * durations[0] / 1000, 1.0), 60.0)
        settings = {
            "failure_rate_threshold": breaker.failure_rate_threshold,
            "minimum_calls": breaker.minimum_calls,
            "window": repr(breaker.window),
            "consecutive_failures": breaker.consecutive_failures,
            "slow_call_duration": breaker.slow_call_duration,
            "slow_call_rate_threshold": breaker.slow_call_rate_threshold,
            "open_duration_ms": durations,
            "half_open_max_calls": breaker.half_open_max_calls,
            "half_open_max_wait": max_wait,
            "bucket_seconds": self.bucket_seconds,
        }
        config = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        ttl_ms = int((window_seconds + max(durations) / 1000 + lease + 60) * 1000)
        slow_rate = breaker.slow_call_rate_threshold if breaker.slow_call_duration else -1
        args: list[Any] = [
            config,
            json.dumps(durations),
            breaker.half_open_max_calls,
            int(max_wait * 1000) if max_wait is not None else -1,
            int(lease * 1000),
            breaker.failure_rate_threshold or -1,
            breaker.minimum_calls,
            slow_rate,
            max(int(window_seconds / self.bucket_seconds), 1),
            int(self.bucket_seconds * 1000),
            ttl_ms,
            self.channel,
            breaker.name,
            self.origin,
        ]
        return config, args

    def _request(self, fleet: _Fleet, *extra: Any) -> dict[str, Any]:
        now = "" if self._clock is None else str(int(self._clock.monotonic() * 1000))
        return {
            "keys": [
                self._key(fleet.name, "state"),
                self._key(fleet.name, "slots"),
                self._key(fleet.name, "window"),
            ],
            # ARGV[16]: names a fleet record this call may have to create (unique per call).
            "args": [now, *fleet.args, uuid.uuid4().hex[:12], *extra],
        }

    def _fault(self, what: str, error: BaseException) -> None:
        """Count and log (at most every 10 s) a fault; refused members may ask again.

        A member the fleet refused waits for a flush answer to ask again; with
        Redis unreachable none comes, and its next grant decides locally.
        """
        next(self._faults)
        for fleet in list(self._fleets.values()):
            for member in fleet.members:
                member.breaker.probe_slots_free()
        now = time.monotonic()
        if now - self._last_fault_log >= 10:  # at most one line per 10 s
            self._last_fault_log = now
            _log.warning("redis unavailable (%s: %s); breakers run on local state", what, error)

    def metrics(self) -> dict[str, int]:
        """Flushes done, Redis faults, messages received, subscriptions, mismatched names."""
        return {
            "flushes": peek(self._flushes),
            "faults": peek(self._faults),
            "received": peek(self._received),
            "subscriptions": peek(self._subscriptions),
            "mismatched": sum(1 for fleet in self._fleets.values() if fleet.mismatched),
        }


def _check_client(client: Any, socket_timeout: float) -> None:
    """Refuse a client that could make a call wait on Redis: retries, or no socket timeout."""
    retry = client.get_retry() if hasattr(client, "get_retry") else None
    if getattr(retry, "_retries", None):
        raise ValueError(
            "client= retries failed commands (redis-py's default Retry for redis.Redis(...)): "
            "a half-open call asking Redis for a probe slot, and the fleet's recovery after an "
            "outage, would wait for the retries. Build it with "
            "retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), use Redis.from_url(...), "
            "or pass url= instead"
        )
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    for option in ("socket_timeout", "socket_connect_timeout"):
        timeout = kwargs.get(option, kwargs.get(f"orig_{option}"))
        if timeout is None or timeout > socket_timeout:
            raise ValueError(
                f"client= waits up to {option}={timeout} (None: without bound), more than "
                f"socket_timeout={socket_timeout}: a call asking a stalled or unreachable Redis "
                f"for a probe slot would wait that long. Build the client with {option}= at "
                "most that, or raise socket_timeout= to accept such waits"
            )


def _open_ms_of(breaker: CircuitBreaker) -> int:
    """Milliseconds `breaker` stays open (0: half-open; -1: not open)."""
    if breaker.state in (State.OPEN, State.HALF_OPEN):
        return int((breaker.retry_after() or 0.0) * 1000)
    return -1


def _open_ms(fleet: _Fleet) -> int:
    """Milliseconds the longest-open of this process's breakers of `fleet` stays open (-1: none)."""
    return max((_open_ms_of(member.breaker) for member in fleet.members), default=-1)


def _fails_again(error: Exception) -> bool:
    """Whether a script's error would recur if sent again (a broken record, our own bug).

    Judged by the error's code: Redis appends "script: ..." to every error
    raised inside a script, READONLY during a failover included.
    """
    message = str(error)
    if isinstance(
        error, redis_lib.exceptions.ReadOnlyError | redis_lib.exceptions.BusyLoadingError
    ):
        return False
    if message.startswith(_PASSING_ERRORS):
        return False
    return message.startswith("WRONGTYPE") or "user_script" in message or "script:" in message


#: Error codes that pass: Redis answers them while failing over, loading or out of memory.
_PASSING_ERRORS = (
    "READONLY",
    "You can't write against a read only replica",
    "OOM",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)


def _decode(reply: list[Any]) -> list[Any]:
    """A script's answer with its strings decoded (redis-py returns bytes)."""
    return [item.decode() if isinstance(item, bytes) else item for item in reply]


def _older(incarnation: str, than: str) -> bool:
    """Whether fleet incarnation `incarnation` was created before `than` (ms-suffix ids)."""
    return _created(incarnation) < _created(than)


def _created(incarnation: str) -> int:
    try:
        return int(incarnation.split("-", 1)[0])
    except ValueError:
        return -1


def _order(known: tuple[str, int]) -> tuple[int, str, int]:
    """Orders fleet (incarnation, epoch) pairs: by creation of the record, then epoch."""
    return (_created(known[0]), known[0], known[1])
