"""`python -m resilience.demo`: a live cascading-failure lab on 127.0.0.1.

Every figure is measured on this machine in this run; a figure is marked
only where it is better than the plain arm's, and the note column says when
`resilience` is not better or another arm beats it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._scenario import Options, Scenario

#: What the demo needs beyond the library: the `demo` extra.
NEEDS = ("rich", "matplotlib", "uvicorn", "starlette")
INSTALL = "pip install 'resilience[demo]'   (or, in a checkout: make demo)"
DEFAULT_OUTPUT = "demo-output"
#: An hour per arm: longer runs say nothing more (and the buckets would fill memory).
MAX_DURATION = 3600.0
#: 50 clients already saturate the one Python process that runs the services.
MAX_CLIENTS = 1000
#: Sockets one cascade client may hold across the chain, hung requests included.
DESCRIPTORS_PER_CLIENT = 20


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the tables, write the plots and the JSON."""
    absent = missing_dependencies()
    if absent:
        sys.stderr.write(
            f"The demo cannot run: it needs {', '.join(absent)} (the `demo` extra), "
            f"which {'is' if len(absent) == 1 else 'are'} not installed here.\n"
            f"Install it with:\n    {INSTALL}\n"
        )
        return 2
    from ._scenario import Options, registered

    scenarios = registered()
    args = _parse(argv, [scenario.name for scenario in scenarios])
    try:
        return _run(args, scenarios, Options(args.quick, args.duration, args.clients))
    except KeyboardInterrupt:
        # Every server and sidecar was stopped on the way out (context managers).
        sys.stderr.write("interrupted: every server and sidecar has been stopped\n")
        return 130


def missing_dependencies() -> list[str]:
    """The demo's dependencies that cannot be imported."""
    absent = []
    for name in NEEDS:
        try:
            __import__(name)
        except ImportError:
            absent.append(name)
    return absent


def _run(args: argparse.Namespace, scenarios: list[Scenario], options: Options) -> int:
    from rich.console import Console
    from rich.text import Text

    from . import _report

    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # piped: each progress line as it happens
    console = Console()
    if args.metrics_port:
        import resilience.prometheus

        try:
            resilience.prometheus.start_http_server(args.metrics_port)
        except OSError as exc:  # the port is taken, most often
            sys.stderr.write(
                f"--metrics-port {args.metrics_port}: cannot listen ({exc.strerror})\n"
            )
            return 2
        console.print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics")
    chosen = [s for s in scenarios if args.scenario in ("all", s.name)]
    report: dict[str, Any] = {"quick": args.quick, "scenarios": {}}
    markdown: list[str] = []
    for scenario in chosen:
        plan = scenario.plan(options)
        header = scenario.header(plan, options)
        console.print()
        # Wrapped here, between words, like the closing notes.
        console.print(Text(textwrap.fill(header, width=min(console.width, 80)), style="bold"))
        results, skipped = {}, {}
        for arm in scenario.arms:
            reason = arm.unavailable()
            if reason is not None:
                skipped[arm.name] = reason
                _print_wrapped(console, f"{arm.name}: skipped, {reason}", "  ")
                continue
            results[arm.name] = _report.progress(
                console, arm.name, plan, partial(arm.run, plan, options)
            )
        lines = _report.compare(scenario, results)
        _report.print_table(console, scenario, results, lines)
        for note in _report.closing_notes(scenario, results, lines):
            _print_wrapped(console, note, "  - ")
        part = _report.summary(plan, header, results, lines)
        part["skipped"] = skipped
        plot = Path(args.plot_dir) / f"resilience-demo-{scenario.name}.png"
        (scenario.plot or _report.plot)(plot, scenario, plan, results)
        part["plot"] = str(plot)
        console.print(f"plot: {plot}", highlight=False)
        report["scenarios"][scenario.name] = part
        markdown.append(_report.markdown(scenario, header, results, lines, skipped))
    json_path = Path(args.json or Path(args.plot_dir) / "resilience-demo.json")
    json_path.write_text(json.dumps(_finite(report), indent=2) + "\n")
    console.print(f"figures: {json_path}", highlight=False)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(markdown))
        console.print(f"tables (Markdown): {args.markdown}", highlight=False)
    return 0


def _print_wrapped(console: Any, text: str, first: str) -> None:
    """`text` wrapped between words to 80 columns at most, after `first`, then indented 4."""
    width = min(console.width, 80)
    wrapped = textwrap.fill(text, width=width, initial_indent=first, subsequent_indent="    ")
    console.print(wrapped, highlight=False, soft_wrap=True)


def _parse(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m resilience.demo", description=__doc__)
    parser.add_argument("--scenario", choices=[*names, "all"], default=names[0])
    parser.add_argument("--quick", action="store_true", help="short runs (5 s per arm)")
    parser.add_argument(
        "--duration", type=_positive, help=f"seconds per run (at most {MAX_DURATION:.0f})"
    )
    parser.add_argument(
        "--clients",
        type=partial(_positive_int, at_most=MAX_CLIENTS),
        help=f"concurrent clients (cascade; at most {MAX_CLIENTS})",
    )
    parser.add_argument(
        "--metrics-port",
        type=partial(_positive_int, at_most=65535),
        help="serve /metrics on 127.0.0.1",
    )
    parser.add_argument(
        "--plot-dir",
        default=DEFAULT_OUTPUT,
        help=f"where the PNG plots (and, by default, the JSON) go; default {DEFAULT_OUTPUT}/",
    )
    parser.add_argument(
        "--json", help="write the measured figures here (default: PLOT_DIR/resilience-demo.json)"
    )
    parser.add_argument("--markdown", help="write the tables here, as in docs/why.md")
    args = parser.parse_args(argv)
    if args.clients is not None and (problem := _check_descriptors(args.clients)):
        parser.error(f"--clients {args.clients}: {problem}")
    # Checked before any run: a bad path must not cost a two-minute run.
    problem = _check_directory(Path(args.plot_dir))
    if problem:
        parser.error(f"--plot-dir {args.plot_dir}: {problem}")
    for option in ("json", "markdown"):
        value = getattr(args, option)
        if value is not None and (problem := _check_file(Path(value))):
            parser.error(f"--{option} {value}: {problem}")
    return args


def _check_directory(path: Path) -> str | None:
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot be created ({exc.strerror})"
    if not os.access(path, os.W_OK):
        return "is not writable"
    return None


def _check_file(path: Path) -> str | None:
    if path.is_dir():
        return "is a directory, not a file"
    parent = path.parent
    if not parent.is_dir():
        return f"its directory {parent} does not exist"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "is not writable"
    return None


def _check_descriptors(clients: int) -> str | None:
    """Whether this process may open the sockets `clients` need; raises its own limit if it can.

    Past its limit a run would not fail: its requests would, counted as the
    arms' failures. Each client holds sockets at every hop, and more pile up
    while payments hangs (the callers' abandoned requests), hence the margin.
    """
    import resource

    needed = DESCRIPTORS_PER_CLIENT * clients + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return None
    return (
        f"needs about {needed} open files and this process may open {hard} "
        f"(ulimit -n): use fewer clients or raise the limit"
    )


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= MAX_DURATION):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_DURATION:.0f}, got {text}"
        )
    return value


def _positive_int(text: str, *, at_most: int) -> int:
    value = int(text)
    if not 0 < value <= at_most:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {at_most}, got {text}")
    return value


def _finite(value: Any) -> Any:
    """NaN is not JSON: None instead (no figure)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
