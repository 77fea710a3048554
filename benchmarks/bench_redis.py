"""Shared breakers over Redis: the call path cost, the flush cost, and the fleet's behaviour.

Needs `redis-server` on PATH (the Debian package); starts one on a free
loopback port without persistence, and stops it at the end.

    python benchmarks/bench_redis.py [--json PATH] [--quick]

The fleet rows run real worker processes (each its own RedisSharedState and
breaker, like the processes of one service) and time them by one clock
(`time.time()`: every process on this machine, and Redis's TIME):

- recovery: 4 workers call a dead downstream until the fleet opens; it
  recovers at T; when is every worker's breaker CLOSED again, after the end
  of the fleet's open period and after T? (target: T + open_duration + 2
  flush intervals)
- failed calls before the fleet trips: 4 workers call a dead downstream (a
  call takes 10 ms to fail) until each is rejected; the failures they made in
  all, with the pooled rule (failure rate over the fleet window) and with the
  per-process rule (consecutive failures: each process's own streak).
- Redis commands per half-open call: the fleet's only probe slot is taken by
  another process; this one's half-open calls after its first (refused) ask.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import redis as redis_lib
from _harness import measure, minimal_decorator, noop, print_table, write_json

import resilience
import resilience.redis as rr

# A worker process: one RedisSharedState (threads), breakers armed by the bench.
# Commands (JSON lines on stdin): arm (attach a breaker), trip (call the dead
# downstream until rejected, report the failures), call (call on, every ~3 ms,
# failing while down), pause (stop calling), down, up, stop. Events (JSON lines
# on stdout), stamped with time.time(): ready, armed, state (a StateChanged),
# tripped, stopped.
WORKER = r"""
import json, sys, threading, time
import resilience, resilience.redis as rr
from resilience.events import StateChanged

url, prefix, flush = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = threading.Lock()


def say(event, **fields):
    line = json.dumps({"ev": event, "t": time.time(), **fields})
    with out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


shared = rr.RedisSharedState(url, prefix=prefix, flush_interval=flush).start()
while not shared.metrics()["subscriptions"]:  # the listener is on the channel
    time.sleep(0.001)
mode = {"down": True, "calling": 0}  # calling: the running call loop's number, 0: none
current = None


def on_event(event):
    if isinstance(event, StateChanged):
        say("state", name=event.name, to=event.to_state.value, reason=event.reason)


def trip(breaker, pace, delay):
    time.sleep(delay)  # this process's phase
    failures = 0
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:
        try:
            permit = breaker.acquire()
        except resilience.CircuitOpenError:
            break
        time.sleep(pace)  # the dead downstream takes this long to fail
        permit.record_failure()
        failures += 1
    say("tripped", failures=failures)


def call(breaker, number):
    while mode["calling"] == number:
        try:
            permit = breaker.acquire()
        except resilience.CircuitOpenError:
            time.sleep(0.002)
            continue
        time.sleep(0.001)  # the downstream call
        if mode["down"]:
            permit.record_failure()
        else:
            permit.record_success()
        time.sleep(0.002)


say("ready")
for line in sys.stdin:
    command = json.loads(line)
    what = command["cmd"]
    if what == "arm":
        current = resilience.CircuitBreaker(command["name"], **command["breaker"])
        current.events.subscribe(on_event)
        shared.attach(current)
        fleet = shared._fleets[command["name"]]
        while fleet.known is None:  # the first flush of it has told us the fleet's state
            time.sleep(0.001)
        say("armed")
    elif what == "trip":
        args = (current, command["pace"], command["delay"])
        threading.Thread(target=trip, args=args, daemon=True).start()
    elif what == "call":
        mode["calling"] += 1
        threading.Thread(target=call, args=(current, mode["calling"]), daemon=True).start()
    elif what == "pause":
        mode["calling"] = -abs(mode["calling"])  # the loop stops after its current call
    elif what in ("down", "up"):
        mode["down"] = what == "down"
    else:
        break
mode["calling"] = 0
shared.stop()
say("stopped")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    """One WORKER process; a thread collects its events."""

    def __init__(self, url: str, prefix: str, flush: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, prefix, str(flush)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()

    def mark(self) -> int:
        with self.changed:
            return len(self.events)

    def wait(
        self, event: str, since: int = 0, timeout: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        """The first `event` (with these fields) from index `since` on."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for found in self.events[since:]:
                    if found["ev"] == event and all(found.get(k) == v for k, v in fields.items()):
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {event} {fields} event; last: {self.events[-5:]}")
                self.changed.wait(left)

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        try:
            self.send("stop")
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        self.process.stdout.close()


def start_workers(url: str, prefix: str, flush: float, count: int = 4) -> list[Worker]:
    workers = [Worker(url, prefix, flush) for _ in range(count)]
    for worker in workers:
        worker.wait("ready")
    return workers


def close_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.close()


def arm(workers: list[Worker], name: str, breaker: dict[str, Any]) -> None:
    marks = [worker.mark() for worker in workers]
    for worker in workers:
        worker.send("arm", name=name, breaker=breaker)
    for worker, mark in zip(workers, marks, strict=True):
        worker.wait("armed", since=mark)


def fleet_until(url: str, prefix: str, name: str) -> tuple[str, float]:
    """The fleet's state and the end of its open period (seconds, Redis's clock)."""
    client = redis_lib.Redis.from_url(url, socket_timeout=1, decode_responses=True)
    try:
        state, until = client.hmget(f"{prefix}:breaker:{name}:state", "state", "until")
    finally:
        client.close()
    return str(state or ""), int(until or 0) / 1000


# -- fleet measurements ------------------------------------------------------------------

WORKERS = 4
RECOVERY_OPEN = 0.5  # open_duration of the recovery runs
RECOVERY_FLUSH = 0.05  # flush_interval of the recovery runs (the default)
EVALS = ("eval", "evalsha", "eval_ro", "evalsha_ro")
TRIP_PACE = 0.01  # a call to the dead downstream takes 10 ms to fail
TRIP_THRESHOLD = 5


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values) * 1000,
        "min": min(values) * 1000,
        "max": max(values) * 1000,
    }


def fleet_recovery(url: str, runs: int) -> dict[str, Any]:
    """The downstream recovers at T: when is every worker's breaker CLOSED again?

    Each run: the workers call a dead downstream until the fleet opens (pooled
    failure rate); at T (at once) it recovers; the open period ends, one probe
    succeeds, the fleet closes, and every worker hears of it.
    """
    prefix = "bench-recovery"
    breaker = {
        "failure_rate_threshold": 0.5,
        "minimum_calls": 5,
        "open_duration": RECOVERY_OPEN,
        "half_open_max_calls": 1,
    }
    workers = start_workers(url, prefix, RECOVERY_FLUSH)
    after_open: list[float] = []
    after_recovery: list[float] = []
    try:
        for run in range(runs):
            name = f"recovery-{run}"
            arm(workers, name, breaker)
            marks = [worker.mark() for worker in workers]
            for worker in workers:
                worker.send("down")
                worker.send("call")
            for worker, mark in zip(workers, marks, strict=True):
                worker.wait("state", since=mark, name=name, to="open")
            state, until = fleet_until(url, prefix, name)
            if state != "open":
                raise RuntimeError(f"the fleet is {state!r}, not open, after every worker opened")
            recovered = time.time()  # T
            for worker in workers:
                worker.send("up")
            closed = max(
                worker.wait("state", since=mark, name=name, to="closed")["t"]
                for worker, mark in zip(workers, marks, strict=True)
            )
            after_open.append(closed - until)
            after_recovery.append(closed - recovered)
            for worker in workers:
                worker.send("pause")
    finally:
        close_workers(workers)
    return {
        "workers": WORKERS,
        "open_duration_s": RECOVERY_OPEN,
        "flush_interval_s": RECOVERY_FLUSH,
        "runs": runs,
        "all_closed_after_open_period_ends_ms": _ms(after_open),
        "all_closed_after_recovery_ms": _ms(after_recovery),
        "target_after_recovery_ms": (RECOVERY_OPEN + 2 * RECOVERY_FLUSH) * 1000,
        "target_after_open_period_ends_ms": 2 * RECOVERY_FLUSH * 1000,
    }


POOLED = {"failure_rate_threshold": 0.5, "minimum_calls": TRIP_THRESHOLD, "open_duration": 30}
STREAK = {
    "failure_rate_threshold": None,
    "consecutive_failures": TRIP_THRESHOLD,
    "open_duration": 30,
}
TRIP_CASES: dict[str, tuple[float, dict[str, Any], bool]] = {
    # label: (flush_interval, breaker settings, calls in lockstep)
    "pooled rate 0.5, minimum_calls 5; flush 5 ms, lockstep": (0.005, POOLED, True),
    "pooled rate 0.5, minimum_calls 5; flush 5 ms, spread": (0.005, POOLED, False),
    "pooled rate 0.5, minimum_calls 5; flush 50 ms, spread": (0.05, POOLED, False),
    "per process: consecutive_failures 5; flush 5 ms, spread": (0.005, STREAK, False),
}


def failures_before_trip(url: str, runs: int) -> dict[str, Any]:
    """Failed calls, in all, before every one of the 4 workers rejects.

    Each worker calls the dead downstream back to back (a call takes TRIP_PACE to
    fail) until it is rejected. In lockstep, the 4 start together (their calls end
    at the same instants: the worst case for the fleet, whose 5th failure comes with
    3 more, and 4 more calls already under way); spread, worker i starts i/4 of a
    call later (unsynchronised traffic).
    """
    results: dict[str, Any] = {}
    for number, (label, (flush, breaker, lockstep)) in enumerate(TRIP_CASES.items()):
        prefix = f"bench-trip-{number}"
        workers = start_workers(url, prefix, flush)
        totals: list[int] = []
        try:
            for run in range(runs):
                arm(workers, f"trip-{run}", breaker)
                marks = [worker.mark() for worker in workers]
                for i, worker in enumerate(workers):
                    delay = 0.0 if lockstep else i * TRIP_PACE / WORKERS
                    worker.send("trip", pace=TRIP_PACE, delay=delay)
                totals.append(
                    sum(
                        worker.wait("tripped", since=mark)["failures"]
                        for worker, mark in zip(workers, marks, strict=True)
                    )
                )
        finally:
            close_workers(workers)
        per_process = breaker is STREAK
        results[label] = {
            "flush_interval_s": flush,
            "lockstep": lockstep,
            "median": statistics.median(totals),
            "min": min(totals),
            "max": max(totals),
            "runs": totals,
            "threshold": TRIP_THRESHOLD,
            # The pooled rule: 2x the fleet threshold. The per-process rule counts each
            # process's own streak: each of the 4 fails about 5 times (4 x 5 expected).
            "rule": "per process" if per_process else "pooled (fleet window)",
            "target": None if per_process else 2 * TRIP_THRESHOLD,
            "expected": WORKERS * TRIP_THRESHOLD if per_process else None,
        }
    return results


def half_open_commands(url: str, number: int) -> dict[str, Any]:
    """Redis commands a half-open call sends while the fleet's probe slots are all taken.

    Two shared states (processes) in this one: `holder` takes the only probe slot;
    `asker`'s half-open calls are refused. Its first call asks Redis (refused); the
    next ones ask nothing until a flush reports a free slot again. Counted by
    wrapping the asker's probe script, and with INFO commandstats (the scripts
    Redis ran meanwhile: both states' flushes too).
    """
    prefix = "bench-halfopen"
    settings: dict[str, Any] = {
        "consecutive_failures": 1,
        "failure_rate_threshold": None,
        "open_duration": 0.5,  # a probe slot's lease: 10 x open_duration = 5 s
        "half_open_max_calls": 1,
    }
    holder_state = rr.RedisSharedState(url, prefix=prefix, flush_interval=0.05).start()
    asker_state = rr.RedisSharedState(url, prefix=prefix, flush_interval=0.05).start()
    holder = holder_state.attach(resilience.CircuitBreaker("halfopen", **settings))
    asker = asker_state.attach(resilience.CircuitBreaker("halfopen", **settings))
    asks = 0
    probe_script = asker_state._probe_script

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal asks
        asks += 1
        return probe_script(*args, **kwargs)

    asker_state._probe_script = counted
    client = redis_lib.Redis.from_url(url, socket_timeout=1)

    def scripts() -> int:
        """Lua scripts Redis has run (commandstats also counts each redis.call inside one)."""
        stats = client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in EVALS)

    def refused_call() -> None:
        try:
            asker.acquire().release()
        except resilience.CircuitOpenError:
            pass
        else:
            raise RuntimeError("the asker got a probe while the only slot was taken")

    try:
        holder.acquire().record_failure()  # the fleet opens
        deadline = time.monotonic() + 5
        while asker.state is not resilience.State.OPEN:
            if time.monotonic() > deadline:
                raise RuntimeError("the asker never heard that the fleet opened")
            time.sleep(0.005)
        time.sleep(0.55)  # the open period ends: both are half-open
        probe = holder.acquire()
        if getattr(probe, "grant", None) is None:
            raise RuntimeError("the holder's probe was not granted by Redis")
        refused_call()  # the first half-open call asks Redis: refused
        first = asks
        before, asks_before = scripts(), asks
        paced = 1000
        start = time.monotonic()
        for _ in range(paced):  # spread over ~0.5 s: every state flushes ~10 times meanwhile
            refused_call()
            time.sleep(0.0005)
        elapsed = time.monotonic() - start
        all_scripts = scripts() - before
        paced_asks = asks - asks_before
        asks_before = asks
        # Within the holder's lease (5 s): then Redis would free its slot.
        ns = measure(refused_call, number=number, repeat=3)
        local_ns = _local_half_open_rejection(settings, number)
        measured_asks = asks - asks_before
        probe.release()  # the slot comes back: the asker's next flush says so; it asks once
        asks_before = asks
        deadline = time.monotonic() + 5
        while True:
            try:
                granted = asker.acquire()
                break
            except resilience.CircuitOpenError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the asker never got the slot back") from None
                time.sleep(0.001)
        asks_after_release = asks - asks_before
        granted.release()
    finally:
        client.close()
        holder_state.stop()
        asker_state.stop()
    return {
        "first_half_open_call_asks": first,
        "refused_calls": paced,
        "refused_calls_seconds": elapsed,
        "probe_asks_per_refused_call": paced_asks / paced,
        "redis_scripts_meanwhile": all_scripts,
        "redis_scripts_per_refused_call": all_scripts / paced,
        "timed_refused_calls": number * 3,
        "probe_asks_in_timed_calls": measured_asks,
        "refused_call_ns": ns,
        "local_breaker_refused_call_ns": local_ns,
        "asks_to_get_the_freed_slot": asks_after_release,
        "target_probe_asks_per_refused_call": 0,
    }


def _local_half_open_rejection(settings: dict[str, Any], number: int) -> float:
    """For comparison: a half-open call refused by a local breaker (its probe is out)."""
    breaker = resilience.CircuitBreaker("local", **{**settings, "open_duration": 0.001})
    breaker.acquire().record_failure()
    time.sleep(0.002)
    probe = breaker.acquire()

    def refused_call() -> None:
        try:
            breaker.acquire().release()
        except resilience.CircuitOpenError:
            pass
        else:
            raise RuntimeError("a local breaker admitted a second probe")

    ns = measure(refused_call, number=number, repeat=3)
    probe.release()
    return ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (20_000, 3) if args.quick else (200_000, 5)
    runs = 3 if args.quick else 7
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed: apt-get install redis-server", file=sys.stderr)
        raise SystemExit(2)
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        ping = redis_lib.Redis.from_url(url, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if ping.ping():
                    break
            except redis_lib.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        ping.close()
        local = resilience.CircuitBreaker("bench-local")(noop)
        shared_state = rr.RedisSharedState(url, prefix="bench").start()
        shared = shared_state.attach(resilience.CircuitBreaker("bench-shared"))(noop)
        minimal = minimal_decorator(noop)
        rows = {
            "minimal decorator": measure(lambda: minimal(1), number=number, repeat=repeat),
            "breaker, in memory": measure(lambda: local(1), number=number, repeat=repeat),
            "breaker, shared over Redis": measure(lambda: shared(1), number=number, repeat=repeat),
        }
        shared_state.stop()
        # The flush: one pipelined round trip, one Lua script per breaker.
        flush_ns = {}
        for count in (1, 100):
            state = rr.RedisSharedState(url, prefix=f"bench-flush-{count}")
            breakers = [resilience.CircuitBreaker(f"b{i}") for i in range(count)]
            for breaker in breakers:  # a breaker belongs to one shared state
                state.attach(breaker)
            state._cycle()  # the first flush loads the scripts
            start = time.perf_counter()
            for _ in range(20):
                for breaker in breakers:
                    breaker.acquire().record_success()
                state._cycle()
            flush_ns[f"flush of {count} breaker(s)"] = (time.perf_counter() - start) / 20 * 1e9
        half_open = half_open_commands(url, min(number, 20_000))
        recovery = fleet_recovery(url, runs)
        trips = failures_before_trip(url, runs)
        idle = [idle_load(url, names) for names in (1, 10, 200)]
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"Python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat}")
    print_table("closed-breaker call", rows, "breaker, in memory")
    print("\nflush (one Lua script per breaker, background thread)")
    for name, ns in flush_ns.items():
        print(f"  {name:<44} {ns / 1000:>9.1f} us")
    print_fleet(recovery, trips, half_open, runs)
    print("\nidle load of one process (default flush_interval 50 ms, no calls)")
    for row in idle:
        print(
            f"  {row['names']:>4} shared names: {row['scripts_per_second']:>7.0f} scripts/s, "
            f"{row['redis_core_share'] * 100:5.1f}% of a Redis core"
        )
    if args.json:
        write_json(
            args.json,
            "redis",
            {
                "call_ns": rows,
                "flush_ns": flush_ns,
                "fleet_recovery": recovery,
                "failures_before_trip": trips,
                "half_open_commands": half_open,
                "idle_load": idle,
            },
            number=number,
        )


def idle_load(url: str, names: int, seconds: float = 2.0) -> dict[str, float]:
    """One process sharing `names` idle breakers: scripts and Redis CPU per second."""
    info = redis_lib.Redis.from_url(url, socket_timeout=1)
    state = rr.RedisSharedState(url, prefix=f"bench-idle-{names}")
    for i in range(names):
        state.attach(resilience.CircuitBreaker(f"idle{i}"))
    state.start()
    time.sleep(0.3)  # scripts loaded, first flushes done

    def reading() -> tuple[float, int, float]:
        stats = info.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        cpu = info.info("cpu")
        return time.monotonic(), stats, cpu["used_cpu_sys"] + cpu["used_cpu_user"]

    start = reading()
    time.sleep(seconds)
    end = reading()
    state.stop()
    info.close()
    elapsed = end[0] - start[0]
    return {
        "names": names,
        "scripts_per_second": (end[1] - start[1]) / elapsed,
        "redis_core_share": (end[2] - start[2]) / elapsed,
    }


def _row(case: str, measured: str, span: str = "", target: str = "") -> None:
    print(f"  {case:<54} {measured:>9} {span:>13} {target:>14}")


def print_fleet(
    recovery: dict[str, Any], trips: dict[str, Any], half_open: dict[str, Any], runs: int
) -> None:
    """The fleet measurements: the median (min-max over the runs) next to the target."""
    print(
        f"\nfleet of {WORKERS} worker processes: from downstream recovery to every breaker "
        f"CLOSED\n  (open_duration {recovery['open_duration_s'] * 1000:.0f} ms, flush_interval "
        f"{recovery['flush_interval_s'] * 1000:.0f} ms, half_open_max_calls 1; {runs} runs)"
    )
    _row("case", "median", "min-max", "target")
    for case, key in (
        ("all closed, after the downstream recovered (T)", "after_recovery"),
        ("all closed, after the fleet's open period ended", "after_open_period_ends"),
    ):
        ms = recovery[f"all_closed_{key}_ms"]
        target = recovery[f"target_{key}_ms"]
        _row(
            case,
            f"{ms['median']:.0f} ms",
            f"{ms['min']:.0f}-{ms['max']:.0f}",
            f"<= {target:.0f} ms",
        )
    print(
        f"\nfailed calls, in all, before every one of {WORKERS} processes rejects "
        f"(a failing call takes {TRIP_PACE * 1000:.0f} ms; {runs} runs)"
    )
    _row("case", "median", "min-max", "target")
    for case, result in trips.items():
        if result["target"] is not None:
            target = f"<= {result['target']}"
        else:  # each process's own streak: not a fleet rule
            target = f"~{WORKERS}x{TRIP_THRESHOLD} expected"
        _row(case, f"{result['median']:.0f}", f"{result['min']}-{result['max']}", target)
    print("\nhalf-open calls while the fleet's only probe slot is held by another process")
    _row("case", "measured", "", "target")
    _row(
        "first half-open call: probe asks sent to Redis",
        str(half_open["first_half_open_call_asks"]),
    )
    _row(
        f"next {half_open['refused_calls']} calls (~0.5 s): probe asks per call",
        f"{half_open['probe_asks_per_refused_call']:.3f}",
        "",
        "0",
    )
    _row(
        "  scripts Redis ran meanwhile (both flushes), per call",
        f"{half_open['redis_scripts_per_refused_call']:.3f}",
        f"({half_open['redis_scripts_meanwhile']} in all)",
    )
    _row(
        f"{half_open['timed_refused_calls']} timed refused calls: probe asks",
        str(half_open["probe_asks_in_timed_calls"]),
        f"{half_open['refused_call_ns']:.0f} ns/call",
        "0",
    )
    _row(
        "  the same refused call, local breaker (no Redis)",
        "",
        f"{half_open['local_breaker_refused_call_ns']:.0f} ns/call",
    )
    _row(
        "slot handed back: asks until this process got it",
        str(half_open["asks_to_get_the_freed_slot"]),
    )


if __name__ == "__main__":
    main()
