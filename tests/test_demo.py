"""The main job: `python -m resilience.demo --quick`, run for real, judged on its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_quick_demo_shows_what_the_library_is_for(tmp_path: Path) -> None:
    """Both scenarios, measured: the protected runs are better where the issue says they must be."""
    out = tmp_path / "demo.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "resilience.demo",
            "--scenario",
            "all",
            "--quick",
            "--json",
            str(out),
            "--plot-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())

    cascade = report["cascade"]
    plain, protected = cascade["plain"], cascade["resilience"]
    assert protected["success_rate"] > plain["success_rate"]
    assert protected["p99_seconds"] < plain["p99_seconds"]
    # Far fewer requests reach payments while it is down (the breaker sheds them).
    assert protected["payments_requests_while_down"] < 0.75 * plain["payments_requests_while_down"]
    assert protected["orders_peak_in_flight"] < plain["orders_peak_in_flight"]
    # The half-open probe finds payments healed within the open period plus a margin.
    assert protected["recovery_seconds"] is not None
    assert protected["recovery_seconds"] <= cascade["open_duration"] + 1.0

    storm = report["retry_storm"]
    naive, guarded = storm["naive retries"], storm["resilience"]
    assert guarded["recovered"] is True
    assert guarded["goodput_after_per_second"] > naive["goodput_after_per_second"]
    assert naive["downstream_requests"] > guarded["downstream_requests"]

    for name in ("cascade", "retry-storm"):
        assert Path(report["plots"][name]).is_file()
    assert "better?" in result.stdout


def test_cascade_protected_arm_uses_the_adaptive_limits() -> None:
    """The protected orders sheds through a ConcurrencyLimit; callers get AIMD limits per origin."""
    import resilience
    from resilience.demo import _cascade
    from resilience.middleware import ASGIConcurrencyLimitMiddleware

    counters: dict[str, float] = {}
    assert isinstance(
        _cascade.orders_app(True, "http://127.0.0.1:1", counters), ASGIConcurrencyLimitMiddleware
    )
    assert not isinstance(
        _cascade.orders_app(False, "http://127.0.0.1:1", counters), ASGIConcurrencyLimitMiddleware
    )
    limit = _cascade.origin_limits(timeout=0.25)("http://127.0.0.1:1")
    assert isinstance(limit, resilience.ConcurrencyLimit)
    assert limit.name == "http://127.0.0.1:1"
