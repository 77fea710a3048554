from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# What each example must print, so that an example that silently stops
# demonstrating its point fails here.
EXPECTED = {
    "adaptive_limit.py": [
        "round 1: limit  4, admitted  4, 503s 0, rejected at once 26 -> limit 7",
        "round 2: limit  7, admitted  7, 503s 0, rejected at once 23 -> limit 11",
        "round 3: limit 11, admitted 11, 503s 1, rejected at once 19 -> limit 14",
        "round 4: limit 14, admitted 14, 503s 4, rejected at once 16 -> limit 10",
        "round 5: limit 10, admitted 10, 503s 0, rejected at once 20 -> limit 16",
        "round 6: limit 16, admitted 16, 503s 6, rejected at once 14 -> limit 8",
        "round 7: limit  8, admitted  8, 503s 0, rejected at once 22 -> limit 13",
        "round 8: limit 13, admitted 13, 503s 3, rejected at once 17 -> limit 11",
        "rejected: concurrency limit 'inventory' reached (11 concurrent calls); rejected after waiting 0.000s",
        "a BulkheadFullError too: True",
        "metrics: {'limit': 11, 'in_flight': 0, 'waiting': 0, 'rejected': 158, 'succeeded': 69, 'dropped': 14, 'ignored': 11}",
        "events: {'limit.changed': 48, 'limit.rejected': 158}",
    ],
    "testing_with_fakeclock.py": [
        "ok: test_retries_wait_without_sleeping",
        "ok: test_the_breaker_opens_and_probes_after_its_open_period",
    ],
    "decorators.py": [
        "stock: 7",
        "price: 9.5",
        "waits: [0.032, 0.015, 0.13]",
        "breaker: closed, calls: {'success': 2, 'failure': 3, 'ignored': 0, 'rejected': 0}",
        "retry: 2 calls succeeded after retrying",
    ],
    "metrics_endpoint.py": [
        'resilience_breaker_state{name="payments",state="closed"} 0.0',
        'resilience_breaker_state{name="payments",state="open"} 1.0',
        'resilience_breaker_state{name="payments",state="half_open"} 0.0',
        'resilience_breaker_state{name="payments",state="forced_open"} 0.0',
        'resilience_breaker_state{name="payments",state="disabled"} 0.0',
        'resilience_breaker_state{name="payments",state="metrics_only"} 0.0',
        'resilience_breaker_calls_total{name="payments",outcome="failure"} 2.0',
        'asgi: resilience_breaker_state{name="payments",state="open"} 1.0',
        'wsgi: resilience_breaker_state{name="payments",state="open"} 1.0',
    ],
    "otel_observer.py": [
        "stock: 7",
        "resilience.retry.scheduled inventory 1",
        "resilience.retry.scheduled inventory 2",
    ],
    "deadline_chain.py": [
        "fast: 200 paid; answered within the deadline: True; budgets shrink: True",
        "slow: 504 payments too slow for our budget; answered within the deadline: True; budgets shrink: True",
    ],
    "fastapi_deadline_504.py": [
        "fast: 200",
        "slow: 504 deadline exceeded: no time was left to finish the request",
        "  answered within the deadline: True",
        "broken: 503 from payments; orders' breaker is open",
        "next: 503 Retry-After: 30",
        'resilience_middleware_responses_total{name="orders",outcome="expired"} 0.0',
        'resilience_middleware_responses_total{name="orders",outcome="deadline_exceeded"} 1.0',
        'resilience_middleware_responses_total{name="orders",outcome="shed"} 1.0',
    ],
    "transport.py": [
        "sync: 200 {'order': 'a-1', 'deadline_ok': True} after 2 attempts",
        "POST is not retried: 503",
        "async: 200 {'order': 'b-2', 'deadline_ok': True} after 2 attempts",
    ],
    "retry_deadline.py": [
        "stock: 7 after waits [0.128, 0.01]",
        "  retry.gave_up: deadline",
        "stock or unknown: -1",
        "gave up within the deadline: True",
        "retry metrics: {'success_first_try': 0, 'success_after_retry': 1, 'failed_after_retry': 1, 'failed_not_retryable': 0, 'retries': 3, 'budget_exhausted': 0}",
    ],
    "breaker.py": [
        "failed: payments is down",
        "failed: payments is down",
        "  event: breaker.threshold_crossed",
        "  event: breaker.state_changed consecutive_failures",
        "failed: payments is down",
        "  event: call.rejected",
        "rejected at once: circuit breaker 'payments' is open; next probe allowed in 10.000s",
        "  event: breaker.state_changed open_duration_elapsed",
        "after 10 s the breaker is half_open",
        "  event: breaker.state_changed probes_failed",
        "failed: payments is down",
        "retry after 20.0 s",
        "  event: breaker.state_changed open_duration_elapsed",
        "  event: breaker.state_changed probes_succeeded",
        "charged o-5",
        "refunded o-5",
        "state=closed calls={'success': 2, 'failure': 4, 'ignored': 0, 'rejected': 1}",
    ],
    "hedging.py": [
        "  event: hedge.sent (attempt 2)",
        "  event: hedge.won (attempt 2)",
        "quote: ACME 101.5 (attempt 2); cancelled before the return: [1]",
        "quote: ACME 101.5 (attempt 3)",
        "metrics: {'calls': 2, 'sent': 1, 'won': 1, 'refused': 0, 'deadline': 0}",
        "sync: MisuseError: hedging needs async code",
    ],
    "custom_policy.py": [
        "ORDERS",
        "stnemyap",
        "outer saw [0.25, 1.5] inner saw [0.25, 1.5]",
        "time asked to wait: [0.25, 1.5] fake time now: 1.75",
    ],
}


def test_every_example_has_expectations() -> None:
    """A new example must say here what it prints."""
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    """Each example runs to completion and prints what its docs promise."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED[name]
