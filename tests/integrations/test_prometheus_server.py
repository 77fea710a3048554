"""A real Prometheus server scrapes a live /metrics endpoint and answers a PromQL query.

Needs the `prometheus` binary (Debian package, installed by .ci/run). Locally
the test is skipped if it is missing; on CI (CI=true) a missing binary fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import resilience
import resilience.prometheus as rp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
    )
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the prometheus binary is missing on CI: .ci/run must install it")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    return binary


@pytest.fixture
def metrics_endpoint() -> Iterator[str]:
    """Our /metrics on a free loopback port, from its own registry."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = rp.start_http_server(port, registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, metrics_endpoint: str) -> Iterator[str]:
    """A Prometheus server scraping the endpoint every second; yields its base URL."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: resilience\n"
        "    static_configs:\n"
        f"      - targets: ['{metrics_endpoint}']\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > give_up or process.poll() is not None:
                pytest.fail("prometheus did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def query(url: str, promql: str) -> list[dict[str, object]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=5) as reply:
        body = json.load(reply)
    assert body["status"] == "success"
    return body["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_sees_the_breaker_the_test_tripped(prometheus: str) -> None:
    """Trip a breaker; PromQL over the real server's HTTP API reports it open."""
    breaker = resilience.CircuitBreaker("prom-e2e", consecutive_failures=1)
    breaker.acquire().record_failure()
    assert breaker.state is resilience.State.OPEN
    promql = 'resilience_breaker_state{name="prom-e2e",state="open"}'
    give_up = time.monotonic() + 60
    result: list[dict[str, object]] = []
    while time.monotonic() < give_up:
        result = query(prometheus, promql)
        if result:
            break
        time.sleep(0.5)
    assert result, "prometheus never scraped the breaker"
    assert result[0]["value"][1] == "1"  # type: ignore[index]
    closed = query(prometheus, 'resilience_breaker_state{name="prom-e2e",state="closed"}')
    assert closed[0]["value"][1] == "0"  # type: ignore[index]
    calls = query(prometheus, 'resilience_breaker_calls_total{name="prom-e2e",outcome="failure"}')
    assert calls[0]["value"][1] == "1"  # type: ignore[index]
