"""Tables, plots, progress and the JSON/Markdown summaries, for any registered scenario.

Honesty rules, applied the same way to every scenario:

- a figure gets the mark only where it is better than the baseline arm's
  (the first arm, plain httpx), as shown: equal after rounding is not better,
  and a row the baseline has no figure for (a hop plain httpx does not have)
  marks no arm;
- the last column says when the protected arm is not better than the
  baseline on a judged row, or when another arm beats it;
- under the table, each row the protected arm loses to another arm is
  listed with the scenario's explanation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ._scenario import seconds_text

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from ._scenario import ArmResult, Better, Plan, Row, Scenario

MARK = "✓"


def missing(value: Any) -> bool:
    """No figure: None (e.g. never recovered) or NaN (e.g. no samples)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell(row: Row, value: Any) -> str:
    return row.missing if missing(value) else row.fmt.format(value)


def better(row: Row, value: Any, than: Any) -> bool:
    """Whether `value` is better than `than` on this row, as the table shows them."""
    if row.better is None or missing(value):
        return False
    if missing(than):
        return True  # e.g. this arm recovered within the run, the other did not
    if cell(row, value) == cell(row, than):
        return False  # equal as shown: no mark for a difference nobody can see
    return _lower_or_higher(row.better, value, than)


def _lower_or_higher(direction: Better, value: Any, than: Any) -> bool:
    return bool(value < than) if direction == "lower" else bool(value > than)


@dataclass(frozen=True)
class Line:
    """One row of a scenario's table, judged."""

    key: str
    label: str
    cells: list[str]  # one per arm that ran, the mark appended where better than the baseline
    better_than_baseline: list[bool]
    note: str  # about the protected arm
    behind: list[str]  # the arms that beat the protected arm on this row


def compare(scenario: Scenario, results: dict[str, ArmResult]) -> list[Line]:
    """The judged table of a scenario's results (arms that did not run are left out)."""
    arms = [arm for arm in scenario.arms if arm.name in results]
    baseline = arms[0].name
    protected = _protected(scenario)
    lines = []
    for row in scenario.rows:
        values = {name: results[name].totals.get(row.key) for name in results}
        marks = [
            arm.role != "baseline"
            and row.versus_baseline
            and better(row, values[arm.name], values[baseline])
            for arm in arms
        ]
        cells = [
            cell(row, values[arm.name]) + (f" {MARK}" if mark else "")
            for arm, mark in zip(arms, marks, strict=True)
        ]
        notes, behind = [], []
        if row.better is not None:
            mine = values[protected]
            if row.versus_baseline and better(row, values[baseline], mine):
                notes.append(f"NOT better than {baseline}")
            elif row.versus_baseline and not better(row, mine, values[baseline]):
                notes.append(f"same as {baseline}")
            for arm in arms:
                if arm.role == "rival" and better(row, values[arm.name], mine):
                    behind.append(arm.name)
                    notes.append(f"{arm.name} better")
        lines.append(Line(row.key, row.label, cells, marks, "; ".join(notes), behind))
    return lines


def closing_notes(
    scenario: Scenario, results: dict[str, ArmResult], lines: list[Line]
) -> list[str]:
    """Why the protected arm is behind where it is, then the scenario's own notes."""
    protected = _protected(scenario)
    notes = []
    for line in lines:
        for rival in line.behind:
            why = scenario.why_behind.get(line.key, "")
            notes.append(
                f"{protected} is behind {rival} on '{line.label.strip()}'"
                + (f": {why}" if why else "")
            )
    return notes + scenario.notes(results)


def print_table(
    console: Any, scenario: Scenario, results: dict[str, ArmResult], lines: list[Line]
) -> None:
    """The table, sized to the console (rich wraps long labels and notes)."""
    from rich import box
    from rich.table import Table

    arms = [arm.name for arm in scenario.arms if arm.name in results]
    baseline = arms[0]
    table = Table(
        title=scenario.name,
        box=box.SIMPLE_HEAD,
        caption=f"{MARK} better than {baseline}; note: about {_protected(scenario)}",
        pad_edge=False,
    )
    # The labels are short and never wrap; the note column takes what is left.
    table.add_column("measured", no_wrap=True)
    for name in arms:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for line in lines:
        table.add_row(line.label, *line.cells, line.note)
    console.print(table)


def _protected(scenario: Scenario) -> str:
    return next(arm.name for arm in scenario.arms if arm.role == "protected")


def markdown(
    scenario: Scenario,
    header: str,
    results: dict[str, ArmResult],
    lines: list[Line],
    skipped: dict[str, str],
) -> str:
    """The table in the Markdown of docs/why.md, with its closing notes."""
    arms = [arm.name for arm in scenario.arms if arm.name in results]
    out = [f"<!-- {header} -->", "", "| measured | " + " | ".join(arms) + " | note |"]
    out.append("|---|" + "---:|" * len(arms) + "---|")
    out.extend(
        f"| {_indented(line.label)} | " + " | ".join(line.cells) + f" | {line.note} |"
        for line in lines
    )
    out.append("")
    out.append(f"{MARK}: better than {arms[0]}; the note is about {_protected(scenario)}.")
    notes = closing_notes(scenario, results, lines)
    notes += [f"{name} did not run: {reason}" for name, reason in skipped.items()]
    if notes:
        out.append("")
        out.extend(f"- {note}" for note in notes)
    return "\n".join(out) + "\n"


def _indented(label: str) -> str:
    """A label's indentation kept in Markdown (a table cell drops leading spaces)."""
    stripped = label.lstrip(" ")
    return "&nbsp;" * (len(label) - len(stripped)) + stripped


def plot(path: Path, scenario: Scenario, plan: Plan, results: dict[str, ArmResult]) -> None:
    """Per second and per arm: the share answered in full, the share degraded, the p99.

    The shares are of the requests started in that second (full, degraded
    and failed add up to 1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The degraded panel only where some arm has a fallback (it would be a flat 0).
    with_degraded = any(b.degraded for result in results.values() for b in result.buckets)
    panels = 3 if with_degraded else 2
    figure, axes = plt.subplots(panels, 1, figsize=(9, 2.5 * panels), sharex=True)
    full, latency = axes[0], axes[-1]
    for name, result in results.items():
        buckets = [b for b in result.buckets if b.answers]
        seconds = [b.start + 0.5 for b in buckets]
        (line,) = full.plot(seconds, [b.full / b.answers for b in buckets], label=name)
        if with_degraded:
            axes[1].plot(
                seconds,
                [b.degraded / b.answers for b in buckets],
                label=name,
                color=line.get_color(),
            )
        latency.plot(seconds, [b.p99_seconds for b in buckets], label=name, color=line.get_color())
    for axis in axes:
        axis.axvspan(*plan.fault, color="red", alpha=0.1, label="fault")
    full.legend(loc="lower left", fontsize="small")
    full.set_ylabel("answered in full")
    for axis in axes[:-1]:
        axis.set_ylim(-0.05, 1.05)
    if with_degraded:
        axes[1].set_ylabel("degraded (fallback)")
    latency.set_ylabel("p99 latency (s)")
    latency.set_xlabel("seconds (requests grouped by the second they started in)")
    figure.suptitle(f"resilience demo: {scenario.name}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def progress(
    console: Any, name: str, plan: Plan, run: Callable[[Callable[[float], None]], ArmResult]
) -> ArmResult:
    """Run one arm with a live bar on a terminal, or one plain line per phase when piped."""
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[phase]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(f"{name:<16}", total=plan.duration, phase="")

            def tick(now: float) -> None:
                bar.update(task, completed=min(now, plan.duration), phase=plan.phase_at(now).name)

            result = run(tick)
            bar.update(task, completed=plan.duration, phase="done")
        return result
    seen: list[str] = []
    began = time.monotonic()

    starts = dict(zip((phase.name for phase in plan.phases), plan.starts(), strict=True))

    def announce(now: float) -> None:
        phase = plan.phase_at(now).name
        if phase not in seen:
            seen.append(phase)
            start = seconds_text(starts[phase])
            console.print(f"  {name}: {phase} (from {start} s)", highlight=False)

    result = run(announce)
    console.print(f"  {name}: done ({time.monotonic() - began:.1f} s)", highlight=False)
    return result


def summary(
    plan: Plan, header: str, results: dict[str, ArmResult], lines: Sequence[Line]
) -> dict[str, Any]:
    """A scenario's part of the JSON report."""
    return {
        "header": header,
        "phases": [
            {"name": phase.name, "seconds": phase.seconds, "fault": phase.fault}
            for phase in plan.phases
        ],
        "fault": list(plan.fault),
        "arms": {
            name: {
                "totals": result.totals,
                "buckets": [asdict(bucket) for bucket in result.buckets],
                **result.details,
            }
            for name, result in results.items()
        },
        "table": [{**asdict(line), "label": line.label.strip()} for line in lines],
    }
