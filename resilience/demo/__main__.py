"""`python -m resilience.demo`: a live cascading-failure lab on 127.0.0.1.

Every figure is measured on this machine in this run; if the protected run is
not better on a line, the table says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _cascade, _storm
from ._harness import RunResult, timeline

if TYPE_CHECKING:
    from collections.abc import Callable
from functools import partial

# (key, label, format, better when lower?) for each scenario's table.
CASCADE_ROWS = [
    ("success_rate", "success rate at the gateway", "{:.1%}", False),
    ("p50_seconds", "p50 latency", "{:.3f} s", True),
    ("p99_seconds", "p99 latency", "{:.3f} s", True),
    ("payments_requests_while_down", "requests reaching payments while down", "{:.0f}", True),
    ("orders_peak_in_flight", "peak in-flight requests at orders", "{:.0f}", True),
    ("recovery_seconds", "time to recover after the fault", "{:.1f} s", True),
    ("orders_fallbacks", "answered by the fallback (degraded)", "{:.0f}", None),
]
STORM_ROWS = [
    ("goodput_before_per_second", "goodput before the trigger", "{:.0f}/s", False),
    ("goodput_during_per_second", "goodput during the trigger", "{:.0f}/s", False),
    ("goodput_after_per_second", "goodput after the trigger", "{:.0f}/s", False),
    ("downstream_requests", "requests sent downstream", "{:.0f}", True),
    ("downstream_work_done", "work done downstream", "{:.0f}", None),
    ("dropped_expired", "stale requests dropped by the deadline", "{:.0f}", None),
]


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the tables, write the plots and the JSON."""
    args = _parse(argv)
    try:
        from rich.console import Console
    except ImportError:
        return 2
    console = Console()
    if args.metrics_port:
        import resilience.prometheus

        resilience.prometheus.start_http_server(args.metrics_port)
        console.print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics")
    quick = args.quick
    report: dict[str, Any] = {"quick": quick}
    scenarios = ["cascade", "retry-storm"] if args.scenario == "all" else [args.scenario]
    for scenario in scenarios:
        if scenario == "cascade":
            duration = args.duration or (10.0 if quick else 30.0)
            clients = args.clients or (20 if quick else 50)
            plan = _cascade.timeline(duration)
            console.rule(
                f"cascade: gateway -> orders -> payments, {clients} clients for {duration:.0f} s; "
                f"payments hangs from {plan.down_from:.0f} s to {plan.down_until:.0f} s"
            )
            results = {
                label: _progress(
                    console,
                    f"{label} httpx",
                    duration,
                    partial(_cascade.run, protected, plan, clients),
                )
                for label, protected in (("plain", False), ("resilience", True))
            }
            summary = {k: _cascade.summarize(v, plan) for k, v in results.items()}
            _table(console, "cascade", summary, CASCADE_ROWS)
            report["cascade"] = {
                "duration": duration,
                "clients": clients,
                "down_from": plan.down_from,
                "down_until": plan.down_until,
                "open_duration": _cascade.OPEN_DURATION,
                **summary,
            }
            _plot(
                args.plot_dir,
                "cascade",
                results,
                (plan.down_from, plan.down_until),
                report,
                console,
            )
        else:
            duration = args.duration or (6.0 if quick else 20.0)
            storm = _storm.plan(duration)
            console.rule(
                f"retry-storm: {storm.arrival_rate:.0f} requests/s to a {storm.workers}-worker "
                f"service; {storm.slowdown:.0f}x slower from {storm.trigger_from:.1f} s "
                f"to {storm.trigger_until:.1f} s"
            )
            results = {
                label: _progress(
                    console,
                    label,
                    duration,
                    partial(_storm.run, protected, storm),
                )
                for label, protected in (("naive retries", False), ("resilience", True))
            }
            summary = {k: _storm.summarize(v, storm) for k, v in results.items()}
            _table(console, "retry-storm", summary, STORM_ROWS)
            for label, row in summary.items():
                verdict = "recovered" if row["recovered"] else "did NOT recover (metastable)"
                console.print(f"  {label}: goodput after the trigger {verdict}")
            report["retry_storm"] = {"duration": duration, **summary}
            _plot(
                args.plot_dir,
                "retry-storm",
                results,
                (storm.trigger_from, storm.trigger_until),
                report,
                console,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        console.print(f"results: {args.json}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m resilience.demo", description=__doc__)
    parser.add_argument("--scenario", choices=["cascade", "retry-storm", "all"], default="cascade")
    parser.add_argument("--quick", action="store_true", help="short runs (about 25 s in all)")
    parser.add_argument("--duration", type=_positive, help="seconds per run")
    parser.add_argument("--clients", type=_positive_int, help="concurrent clients (cascade)")
    parser.add_argument("--metrics-port", type=_positive_int, help="serve /metrics on 127.0.0.1")
    parser.add_argument("--json", help="write the measured figures to this file")
    parser.add_argument("--plot-dir", default=".", help="where PNG plots go (with matplotlib)")
    return parser.parse_args(argv)


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _progress(
    console: Any, label: str, duration: float, run: Callable[[Callable[[float], None]], RunResult]
) -> RunResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task(f"{label:<20}", total=duration)
        result = run(lambda now: progress.update(task, completed=min(now, duration)))
        progress.update(task, completed=duration)
    return result


def _table(console: Any, title: str, summary: dict[str, dict[str, Any]], rows: list[Any]) -> None:
    from rich.table import Table

    labels = list(summary)
    table = Table(title=title)
    table.add_column("measured")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column(f"{labels[1]} better?", justify="center")
    for key, text, fmt, lower_is_better in rows:
        values = [summary[label][key] for label in labels]
        cells = ["n/a" if _missing(v) else fmt.format(v) for v in values]
        table.add_row(text, *cells, _verdict(values[0], values[1], lower_is_better))
    console.print(table)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _verdict(base: Any, protected: Any, lower_is_better: bool | None) -> str:
    if lower_is_better is None:
        return ""
    if _missing(protected) and not _missing(base):
        return "no"  # e.g. never recovered
    if _missing(base) and not _missing(protected):
        return "yes"
    if _missing(base) or base == protected:
        return "same"
    better = protected < base if lower_is_better else protected > base
    return "yes" if better else "NO"


def _plot(
    directory: str,
    name: str,
    results: dict[str, RunResult],
    fault: tuple[float, float],
    report: dict[str, Any],
    console: Any,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # the plot comes with the demo extra
    figure, (success, latency) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for label, result in results.items():
        rows = timeline(result.samples)
        success.plot([r[0] for r in rows], [r[1] for r in rows], label=label)
        latency.plot([r[0] for r in rows], [r[2] for r in rows], label=label)
    for axis in (success, latency):
        axis.axvspan(*fault, color="red", alpha=0.1, label="fault")
        axis.legend(loc="lower left")
    success.set_ylabel("success rate")
    latency.set_ylabel("p99 latency (s)")
    latency.set_xlabel("seconds")
    figure.suptitle(f"resilience demo: {name}")
    path = Path(directory) / f"resilience-demo-{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    report.setdefault("plots", {})[name] = str(path)
    console.print(f"plot: {path}")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serializable: {value!r}")


if __name__ == "__main__":
    sys.exit(main())
