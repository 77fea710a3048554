"""Two worker processes in prometheus_client's multiprocess mode, one aggregated scrape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

WORKER = """
import sys
import resilience
import resilience.prometheus

failures, successes, trip = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "trip"
breaker = resilience.CircuitBreaker("mp-shared", consecutive_failures=failures if trip else 100)
for _ in range(failures):
    breaker.acquire().record_failure()
for _ in range(successes):
    if breaker.state is resilience.State.CLOSED:
        breaker.acquire().record_success()
retry = resilience.Retry(on=ValueError, attempts=2, wait=0, name="mp-retry")
retry.call(lambda: 1)
exporter = resilience.prometheus.MultiprocessExporter(interval=0.05).start()
print("ready", flush=True)
sys.stdin.read()  # stay alive (a live worker) until the test has scraped
exporter.stop()
"""


def scrape(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            samples[(sample.name, labels)] = sample.value
    return samples


def test_two_workers_are_aggregated(tmp_path: Path) -> None:
    """Counters are summed across workers; the state gauge is the max over live workers."""
    env = {**_clean_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in (("3", "0", "trip"), ("1", "4", "keep"))
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        samples = scrape(tmp_path)
    finally:
        for worker in workers:
            worker.communicate(input="", timeout=30)
    name = ("name", "mp-shared")
    assert samples[("resilience_breaker_calls_total", (name, ("outcome", "failure")))] == 4
    assert samples[("resilience_breaker_calls_total", (name, ("outcome", "success")))] == 4
    # One worker is open, the other closed: both states show 1 (max over workers).
    assert samples[("resilience_breaker_state", (name, ("state", "open")))] == 1
    assert samples[("resilience_breaker_state", (name, ("state", "closed")))] == 1
    assert samples[("resilience_breaker_state", (name, ("state", "half_open")))] == 0
    retry = ("name", "mp-retry")
    assert samples[("resilience_retry_calls_total", (retry, ("outcome", "success_first_try")))] == 2
    assert all(worker.returncode == 0 for worker in workers)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.lower().startswith("prometheus_multiproc")}
