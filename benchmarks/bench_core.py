"""Per-call overhead of the shared decorator machinery (resilience._compose).

Every policy's hot path sits on this machinery, so its cost is the floor under
the breaker's and the retry's. Measured in one process run, side by side with
a bare call and a minimal hand-written try/except decorator, and reported as
nanoseconds per call and as ratios to the minimal decorator.

    python benchmarks/bench_core.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import platform

from _harness import (
    anoop,
    measure,
    measure_async,
    minimal_decorator,
    noop,
    print_table,
    write_json,
)

from resilience import compose
from resilience._compose import Guard


class NoopGuard(Guard[None]):
    """A guard that admits everything and records nothing: pure machinery cost."""

    def _enter(self) -> None:
        return None

    def _on_error(self, token: None, exc: BaseException) -> None:
        pass

    def _on_exit(self, token: None) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (20_000, 3) if args.quick else (200_000, 7)

    guard = NoopGuard()
    guarded = guard(noop)
    minimal = minimal_decorator(noop)
    three = compose(NoopGuard(), NoopGuard(), NoopGuard())(noop)
    aguarded = guard(anoop)

    def with_block() -> None:
        with guard:
            noop(1)

    sync_rows = {
        "bare call": measure(lambda: noop(1), number=number, repeat=repeat),
        "minimal try/except decorator": measure(lambda: minimal(1), number=number, repeat=repeat),
        "resilience Guard decorator": measure(lambda: guarded(1), number=number, repeat=repeat),
        "resilience guard.call(fn, x)": measure(
            lambda: guard.call(noop, 1), number=number, repeat=repeat
        ),
        "resilience `with guard:`": measure(with_block, number=number, repeat=repeat),
        "resilience compose(3 guards)": measure(lambda: three(1), number=number, repeat=repeat),
    }
    async_rows = {
        "bare await": measure_async(lambda: anoop(1), number=number, repeat=repeat),
        "resilience Guard decorator (async)": measure_async(
            lambda: aguarded(1), number=number, repeat=repeat
        ),
    }
    print(f"Python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat}")
    rows = {**sync_rows, **async_rows}
    print_table("decorator machinery", rows, baseline="minimal try/except decorator")
    if args.json:
        baseline = rows["minimal try/except decorator"]
        write_json(
            args.json,
            "core",
            {
                "ns_per_call": rows,
                "ratio_to_minimal_decorator": {name: ns / baseline for name, ns in rows.items()},
            },
            number=number,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
