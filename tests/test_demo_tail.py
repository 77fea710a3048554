"""The demo's "tail" scenario (docs/why.md, "Tail latency"), run for real in its short mode.

Both arms run once (2 s each, 300 GETs) against the loopback downstream. The
checks are about honesty and the budget, never about how fast anything is:
the figures add up, the extra load stays within the hedge budget and its
reserve, the table marks only what is better and says what is not.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("rich")
pytest.importorskip("matplotlib")

import resilience
from resilience.demo import _report
from resilience.demo._harness import open_loop
from resilience.demo._scenario import ArmResult, Options, registered
from resilience.demo.scenarios import _tail

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

OPTIONS = Options(quick=True, duration=2.0)


@pytest.fixture(scope="module")
def tail_run() -> dict[str, ArmResult]:
    """One short run of both arms, as `--scenario tail --quick --duration 2` does."""
    plan = _tail.plan(OPTIONS)
    return {arm.name: arm.run(plan, OPTIONS, lambda now: None) for arm in _tail.SCENARIO.arms}


def test_the_scenario_is_registered_as_tail() -> None:
    """`python -m resilience.demo --scenario tail` runs it (docs/why.md)."""
    assert _tail.SCENARIO in registered()
    assert _tail.SCENARIO.name == "tail"
    assert [arm.name for arm in _tail.SCENARIO.arms] == ["plain", "resilience"]
    plan = _tail.plan(Options(quick=True))
    assert plan.duration == 3.0
    assert plan.phases[-1].fault  # the overload comes last
    assert _tail.plan(Options()).duration == 12.0


def test_every_call_is_answered_full_degraded_or_failed(tail_run: dict[str, ArmResult]) -> None:
    """The same calls on both arms (an open loop); full + degraded + failed = all of them."""
    expected = _tail.RATE * 2.0
    for result in tail_run.values():
        totals = result.totals
        assert abs(totals["calls"] - expected) <= 1
        assert totals["answers"] == totals["calls"]
        assert totals["full"] + totals["degraded"] + totals["failed"] == totals["answers"]
        for key in ("full", "degraded", "failed"):
            assert sum(getattr(bucket, key) for bucket in result.buckets) == totals[key]
        for key in ("p50_ms", "p99_ms", "p999_ms"):
            assert math.isfinite(totals[key])
        assert totals["p50_ms"] <= totals["p99_ms"] <= totals["p999_ms"]
    assert tail_run["plain"].totals["calls"] == tail_run["resilience"].totals["calls"]


def test_extra_load_stays_within_the_budget_and_its_reserve(
    tail_run: dict[str, ArmResult],
) -> None:
    """Hedges add at most 5% of the calls plus the reserve (docs/why.md, docs/guide/hedging.md).

    The downstream counts every request it receives: beyond one per call,
    each is a hedge, and no more hedges are sent than the budget allows. A
    call that never reached it (given up while connecting on a loaded
    machine: once, 299 of 300 arrived) failed, and offsets no hedge.
    """
    plain, mine = tail_run["plain"].totals, tail_run["resilience"].totals
    for totals in (plain, mine):
        assert 0 <= totals["calls_not_received"] <= totals["failed"]
    reached = plain["calls"] - plain["calls_not_received"]
    assert plain["downstream_requests"] == reached  # one request per call, never more
    assert plain["extra_share"] == 0
    calls = mine["calls"]
    extra = mine["downstream_requests"] - (calls - mine["calls_not_received"])
    assert 0 <= extra <= mine["hedges_sent"]
    assert mine["extra_share"] == pytest.approx(extra / calls)
    # A run shorter than the budget's 10 s window: 5% of the calls + 10 in all.
    assert mine["hedges_sent"] <= 0.05 * calls + 10
    assert mine["extra_share"] <= mine["budget_share"]
    assert mine["budget_share"] == pytest.approx((0.05 * calls + 10) / calls)


def test_hedges_sent_at_least_won(tail_run: dict[str, ArmResult]) -> None:
    """A hedge that won was sent; the overload's counts are part of the run's."""
    mine = tail_run["resilience"]
    totals, overload = mine.totals, mine.details["hedge_metrics_overload"]
    assert totals["hedges_sent"] >= totals["hedges_won"] >= 0
    assert totals["hedges_refused"] >= 0
    for key in ("sent", "won", "refused"):
        assert 0 <= overload[key] <= mine.details["hedge_metrics"][key]
    assert tail_run["plain"].totals["hedges_sent"] == 0


def test_the_table_marks_only_what_is_better_and_fits_80_columns(
    tail_run: dict[str, ArmResult],
) -> None:
    """A mark only where resilience's figure is better; a note where it is not (docs/why.md)."""
    from rich.console import Console

    scenario = _tail.SCENARIO
    lines = _report.compare(scenario, tail_run)
    rows = {row.key: row for row in scenario.rows}
    for line in lines:
        row = rows[line.key]
        plain, mine = (tail_run[name].totals.get(row.key) for name in ("plain", "resilience"))
        assert line.better_than_baseline == [False, _report.better(row, mine, plain)]
        if row.better is not None and not _report.better(row, mine, plain):
            assert "NOT better" in line.note or "same as" in line.note, line
    extra = next(line for line in lines if line.key == "extra_share")
    if tail_run["resilience"].totals["extra_share"] > 0:
        assert extra.note == "NOT better than plain"  # hedging costs load: the table says so
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    _report.print_table(console, scenario, tail_run, lines)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for line in lines:
        for cell in line.cells:
            assert cell in text  # no figure cut or folded
    notes = _report.closing_notes(scenario, tail_run, lines)
    assert any("hedges sent" in note and "refused" in note for note in notes)


def test_the_plot_is_written(tail_run: dict[str, ArmResult], tmp_path: Path) -> None:
    """The scenario's own plot: latency by percentile, and p99 per second."""
    assert _tail.SCENARIO.plot is not None
    path = tmp_path / "tail.png"
    _tail.SCENARIO.plot(path, _tail.SCENARIO, _tail.plan(OPTIONS), tail_run)
    assert path.read_bytes().startswith(b"\x89PNG")
    for result in tail_run.values():
        quantiles = result.details["latency_by_percentile_ms"]
        assert [q for q, _ in quantiles] == _tail.PERCENTILES
        assert [ms for _, ms in quantiles] == sorted(ms for _, ms in quantiles)


def test_a_call_that_never_reached_the_downstream_offsets_no_hedge() -> None:
    """Extra load counts requests beyond one per call; a missing call counts 0, not -1."""
    received = {0: 1, 1: 2, 3: 1}  # call 1 was hedged, call 2 never arrived
    assert _tail.extra_share(received, [0, 1, 2, 3]) == pytest.approx(1 / 4)
    assert _tail.extra_share({0: 1}, [0, 1]) == 0
    assert _tail.extra_share({}, []) == 0


def test_budget_allows_ratio_plus_a_reserve_per_window() -> None:
    """5% of the calls, plus 10 per 10 s window the run touches (windows are bucket-aligned)."""
    hedge = resilience.Hedge()
    assert _tail.budget_allows(hedge, 1000, 3.0) == pytest.approx(60)
    assert _tail.budget_allows(hedge, 1000, 12.0) == pytest.approx(70)
    assert _tail.budget_allows(resilience.Hedge(ratio=0.1), 100, 2.0) == pytest.approx(20)


def test_the_open_loop_keeps_its_rate_when_calls_block_the_loop() -> None:
    """Arrivals due while the event loop was blocked still start; their wait counts."""
    seen: list[float] = []

    async def blocking(_: httpx.AsyncClient) -> bool:
        seen.append(time.monotonic())
        if len(seen) == 1:
            time.sleep(0.1)  # noqa: ASYNC251  (blocks the loop: 10 arrivals fall due meanwhile)
        return True

    samples: list[Any] = asyncio.run(
        open_loop(
            blocking,
            rate=100,
            duration=0.3,
            give_up_after=1.0,
            begin=[0.0],
            on_tick=lambda now: None,
        )
    )
    assert len(samples) == 30
    assert [round(s.started, 2) for s in sorted(samples, key=lambda s: s.started)] == [
        round(i / 100, 2) for i in range(30)
    ]
    late = [s for s in samples if 0.0 < s.started < 0.09]
    assert late
    assert max(s.latency for s in late) >= 0.05  # counted from when the arrival was due
