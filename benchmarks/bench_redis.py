"""Shared breakers over Redis: the call path cost, and the flush cost.

Needs `redis-server` on PATH (the Debian package); starts one on a free
loopback port without persistence, and stops it at the end.

    python benchmarks/bench_redis.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import socket
import subprocess
import sys
import time

from _harness import measure, minimal_decorator, noop, print_table, write_json

import resilience
import resilience.redis as rr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (20_000, 3) if args.quick else (200_000, 5)
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
        time.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        local = resilience.CircuitBreaker("bench-local")(noop)
        shared_state = rr.RedisSharedState(url, prefix="bench").start()
        shared = shared_state.attach(resilience.CircuitBreaker("bench-shared"))(noop)
        minimal = minimal_decorator(noop)
        rows = {
            "minimal decorator": measure(lambda: minimal(1), number=number, repeat=repeat),
            "breaker, in memory": measure(lambda: local(1), number=number, repeat=repeat),
            "breaker, shared over Redis": measure(lambda: shared(1), number=number, repeat=repeat),
        }
        # The flush: one pipelined round trip, one Lua script per breaker.
        breakers = [resilience.CircuitBreaker(f"b{i}") for i in range(100)]
        flush_ns = {}
        for count in (1, 100):
            state = rr.RedisSharedState(url, prefix=f"bench-flush-{count}")
            for breaker in breakers[:count]:
                state.attach(breaker)
            start = time.perf_counter()
            for _ in range(20):
                for breaker in breakers[:count]:
                    breaker.acquire().record_success()
                state._flush()
            flush_ns[f"flush of {count} breaker(s)"] = (time.perf_counter() - start) / 20 * 1e9
        shared_state.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"Python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat}")
    print_table("closed-breaker call", rows, "breaker, in memory")
    print("\nflush (one Lua script per breaker, background thread)")
    for name, ns in flush_ns.items():
        print(f"  {name:<44} {ns / 1000:>9.1f} us")
    if args.json:
        write_json(args.json, "redis", {"call_ns": rows, "flush_ns": flush_ns}, number=number)


if __name__ == "__main__":
    main()
