from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import types

import pytest

import resilience

PUBLIC_API = {
    "AsyncResilientTransport",
    "DEADLINE_HEADER",
    "HTTPCircuitOpenError",
    "HTTPConcurrencyLimitExceededError",
    "HTTPDeadlineExceededError",
    "ResilientTransport",
    "Bulkhead",
    "ConcurrencyLimit",
    "ConcurrencyLimitExceededError",
    "LimitPermit",
    "LimitAlgorithm",
    "AIMDLimit",
    "Gradient2Limit",
    "VegasLimit",
    "Fallback",
    "Hedge",
    "Timeout",
    "Backoff",
    "Deadline",
    "Retry",
    "RetryBudget",
    "RetryExhaustedError",
    "current_deadline",
    "deadline",
    "parse_retry_after",
    "remaining",
    "BreakerMetrics",
    "BreakerRegistry",
    "BulkheadFullError",
    "CircuitBreaker",
    "CountWindow",
    "Permit",
    "TimeWindow",
    "exponential_open_duration",
    "CircuitOpenError",
    "Clock",
    "DeadlineExceededError",
    "MisuseError",
    "Outcome",
    "Pipeline",
    "Policy",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "State",
    "SystemClock",
    "__version__",
    "compose",
    "events",
}


def test_all_is_exactly_the_public_api() -> None:
    """__all__ lists the public names, sorted, and nothing private leaks."""
    assert set(resilience.__all__) == PUBLIC_API
    assert len(resilience.__all__) == len(set(resilience.__all__))
    for name in resilience.__all__:
        assert getattr(resilience, name) is not None
    public_attributes = {
        name
        for name, value in vars(resilience).items()
        if not name.startswith("_")
        and name not in {"annotations", "Any", "TYPE_CHECKING"}
        # Submodules imported by other tests (resilience.transport...) are reachable
        # as attributes but are not names of the top-level API.
        and not isinstance(value, types.ModuleType)
    }
    assert public_attributes <= PUBLIC_API


def test_version_comes_from_the_installed_metadata() -> None:
    """__version__ is read lazily from the package metadata."""
    from importlib.metadata import version

    assert resilience.__version__ == version("resilience")


def test_unknown_attributes_raise_attribute_error() -> None:
    """The lazy module __getattr__ does not swallow typos."""
    with pytest.raises(AttributeError, match="CircuitBraker"):
        resilience.CircuitBraker  # type: ignore[attr-defined]  # noqa: B018


IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import resilience
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("httpx", "prometheus_client", "structlog", "redis", "tenacity",
                           "asyncio", "trio") if m in sys.modules)
print(json.dumps({"ms": elapsed * 1000, "heavy": heavy}))
"""


def test_import_is_cheap_and_pulls_in_no_integration() -> None:
    """`import resilience` loads no integration library and stays fast.

    The target is < 30 ms (median of 7 fresh interpreters); the assertion is a
    generous 100 ms so that a loaded CI machine does not fail the suite.
    """
    # Measure what users get: compiled bytecode (a first run writes it), even if
    # this environment asks Python not to write any.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs = []
    for _ in range(8):
        output = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        runs.append(json.loads(output))
    runs = runs[1:]  # the first run compiled the bytecode
    median_ms = statistics.median(run["ms"] for run in runs)
    print(f"import resilience: median {median_ms:.1f} ms over {len(runs)} runs")
    assert all(run["heavy"] == [] for run in runs), runs
    assert median_ms < 100
