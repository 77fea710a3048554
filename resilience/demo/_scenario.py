"""What a demo scenario is, and the registry that lists them.

A scenario has a name, a plan (phases with durations, one of them the
fault), a set of arms (the same work done different ways: the first is the
baseline, usually plain httpx; one is the protected arm, `resilience`) and
the rows of its table. Each arm's run yields per-second buckets and totals;
the table code (`_report.py`) knows nothing about any particular scenario.

To add a scenario, add one module to `resilience/demo/scenarios/` that
builds a `Scenario` and calls `register()` on import: `scenarios/__init__.py`
imports every module of the package, so nothing else needs editing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from ._harness import Bucket

Role = Literal["baseline", "rival", "protected"]
Better = Literal["lower", "higher"] | None


def seconds_text(value: float) -> str:
    """Seconds as the plan has them: 7.5, 18, 1.25 (never rounded to a time it is not)."""
    return f"{value:.2f}".rstrip("0").removesuffix(".")


@dataclass(frozen=True)
class Phase:
    """A stretch of a run: its name and how long it lasts, in seconds."""

    name: str
    seconds: float
    fault: bool = False


@dataclass(frozen=True)
class Plan:
    """The phases of every arm's run, one after the other."""

    phases: tuple[Phase, ...]

    @property
    def duration(self) -> float:
        return sum(phase.seconds for phase in self.phases)

    def starts(self) -> list[float]:
        """When each phase begins, in seconds since the run began."""
        starts, t = [], 0.0
        for phase in self.phases:
            starts.append(t)
            t += phase.seconds
        return starts

    @property
    def fault(self) -> tuple[float, float]:
        """(start, end) of the fault phase."""
        for start, phase in zip(self.starts(), self.phases, strict=True):
            if phase.fault:
                return (start, start + phase.seconds)
        raise ValueError("this plan has no fault phase")

    def phase_at(self, t: float) -> Phase:
        for start, phase in zip(self.starts(), self.phases, strict=True):
            if t < start + phase.seconds:
                return phase
        return self.phases[-1]


@dataclass(frozen=True)
class Options:
    """What the command line chose; None means the scenario's default."""

    quick: bool = False
    duration: float | None = None
    clients: int | None = None


@dataclass(frozen=True)
class Row:
    """One line of a scenario's table: a key of the arms' totals, and which way is better.

    `better` None: a figure to read, not to judge (no mark either way).
    `missing` is shown when an arm has no figure (None or NaN).
    `versus_baseline` False: the baseline has nothing to compare here (plain
    httpx has no hop to measure), so no arm is marked against it; the
    protected arm is still compared with the rivals.
    """

    key: str
    label: str
    fmt: str
    better: Better
    missing: str = "n/a"
    versus_baseline: bool = True


@dataclass
class ArmResult:
    """What one arm measured: per-second buckets (for the plot) and totals (for the table)."""

    buckets: list[Bucket]
    totals: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Arm:
    """One way of doing the scenario's work.

    `unavailable` returns why the arm cannot run here (with how to fix it), or None.
    """

    name: str
    role: Role
    run: Callable[[Plan, Options, Callable[[float], None]], ArmResult]
    unavailable: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class Scenario:
    """A named experiment: its plan, arms and table rows.

    `why_behind` explains, per row key, why the protected arm may lose that row
    to a rival (printed under the table when it does). `plot` draws the
    scenario's figure when the common one (`_report.plot`: answered in full
    and p99, per second) does not show what it is about.
    """

    name: str
    order: int
    plan: Callable[[Options], Plan]
    header: Callable[[Plan, Options], str]
    arms: Sequence[Arm]
    rows: Sequence[Row]
    why_behind: Mapping[str, str] = field(default_factory=dict)
    notes: Callable[[dict[str, ArmResult]], list[str]] = lambda results: []
    plot: Callable[[Path, Scenario, Plan, dict[str, ArmResult]], None] | None = None

    def __post_init__(self) -> None:
        roles = [arm.role for arm in self.arms]
        if not roles or roles[0] != "baseline" or roles.count("baseline") != 1:
            raise ValueError(f"scenario {self.name!r}: the first arm, and only it, is the baseline")
        if roles.count("protected") != 1:
            raise ValueError(f"scenario {self.name!r}: exactly one arm is the protected one")


_REGISTRY: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add a scenario to `--scenario`'s choices (and to `--scenario all`)."""
    if scenario.name in _REGISTRY or scenario.name == "all":
        raise ValueError(f"a scenario named {scenario.name!r} is already registered")
    _REGISTRY[scenario.name] = scenario
    return scenario


def registered() -> list[Scenario]:
    """Every registered scenario, in their `order`."""
    from . import scenarios  # noqa: F401  (importing it registers them all)

    return sorted(_REGISTRY.values(), key=lambda scenario: (scenario.order, scenario.name))
