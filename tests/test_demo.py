"""The main job: `python -m resilience.demo`, run for real, judged on its JSON and its output.

The quick run covers every arm that can run here (the HAProxy sidecar arm
when haproxy is installed, which CI guarantees) and checks the honesty rules
of docs/why.md: full + degraded + failed = all answers, a mark only where a
figure is better than plain's, a note where resilience is not better.
No assertion here is about how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("rich")
pytest.importorskip("matplotlib")

from resilience.demo import __main__ as demo
from resilience.demo import _harness, _report, _sidecar
from resilience.demo._harness import (
    Sample,
    WorkerPool,
    check_outcomes,
    count_outcomes,
    per_second,
    recovery_seconds,
)
from resilience.demo._scenario import (
    Arm,
    ArmResult,
    Options,
    Phase,
    Plan,
    Row,
    Scenario,
    registered,
    seconds_text,
)
from resilience.demo.scenarios import _cascade, _retry_storm, _tail


def require_haproxy() -> str:
    binary = _sidecar.find_haproxy()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is missing on CI: .ci/run must install it")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return binary


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run of every scenario and arm, output piped (as in CI or `| tee`)."""
    directory = tmp_path_factory.mktemp("demo")
    import resilience

    # This checkout's package, whatever the working directory (it is the temporary one).
    root = str(Path(resilience.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    metrics_port = _harness.free_port()
    scraped: list[str] = []
    finished = threading.Event()

    def scrape() -> None:  # what `--metrics-port` promises: /metrics while the demo runs
        while not finished.wait(0.5):
            try:
                body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1.0).text
            except httpx.HTTPError:
                continue  # not listening yet
            scraped.append(body)
            if "resilience_breaker_state{" in body:
                return

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "resilience.demo",
            "--scenario",
            "all",
            "--quick",
            "--metrics-port",
            str(metrics_port),
            "--duration",
            "2.5",  # every phase still sees several progress ticks (one per 0.2 s)
            "--plot-dir",
            str(directory / "plots"),
            "--json",
            str(directory / "demo.json"),
            "--markdown",
            str(directory / "tables.md"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=directory,
        env=env,
    )
    finished.set()
    scraper.join(timeout=5)
    assert result.returncode == 0, result.stderr
    return {
        "directory": directory,
        "stdout": result.stdout,
        "report": json.loads((directory / "demo.json").read_text()),
        "metrics_port": metrics_port,
        "scraped": scraped,
    }


def test_quick_run_covers_every_arm_that_can_run(quick_run: dict[str, Any]) -> None:
    """Every registered scenario ran every arm; the sidecar arm ran wherever haproxy exists."""
    scenarios = quick_run["report"]["scenarios"]
    assert set(scenarios) == {scenario.name for scenario in registered()}
    for scenario in registered():
        part = scenarios[scenario.name]
        ran, skipped = set(part["arms"]), part["skipped"]
        assert ran | set(skipped) == {arm.name for arm in scenario.arms}
        assert not ran & set(skipped)
        for name in skipped:
            assert "apt-get install haproxy" in skipped[name]
    if _sidecar.find_haproxy() is not None or os.environ.get("CI") == "true":
        assert "haproxy" in scenarios["cascade"]["arms"], scenarios["cascade"]["skipped"]


def test_metrics_port_serves_metrics_while_it_runs(quick_run: dict[str, Any]) -> None:
    """docs/why.md: `--metrics-port 9464` lets you watch /metrics while it runs."""
    port = quick_run["metrics_port"]
    assert f"metrics: http://127.0.0.1:{port}/metrics" in quick_run["stdout"]
    assert any("resilience_breaker_state{" in body for body in quick_run["scraped"])


def test_every_answer_is_full_degraded_or_failed(quick_run: dict[str, Any]) -> None:
    """Full + degraded + failed = all answers, in the totals and in the per-second buckets."""
    for part in quick_run["report"]["scenarios"].values():
        for arm in part["arms"].values():
            totals, buckets = arm["totals"], arm["buckets"]
            assert totals["answers"] > 0
            assert totals["full"] + totals["degraded"] + totals["failed"] == totals["answers"]
            for key in ("full", "degraded", "failed"):
                assert sum(bucket[key] for bucket in buckets) == totals[key]


def test_the_cascade_splits_the_fault_by_what_a_request_needs(quick_run: dict[str, Any]) -> None:
    """docs/why.md: four in five requests are reads, one a checkout; reads have no fallback.

    The fault's "in full" is the reads in full plus the checkouts in full.
    """
    for name, arm in quick_run["report"]["scenarios"]["cascade"]["arms"].items():
        totals = arm["totals"]
        by_kind = totals["by_kind"]
        assert set(by_kind) == {"read", "checkout"}
        for outcome in ("full", "degraded", "failed"):
            assert sum(kind[outcome] for kind in by_kind.values()) == totals[outcome], name
        # The n-th request is a checkout when n % 5 == 4: the mix holds exactly.
        assert sum(by_kind["checkout"].values()) == totals["answers"] // 5, name
        assert by_kind["read"]["degraded"] == 0, name
        assert totals["full_during_fault"] == (
            totals["reads_full_during_fault"] + totals["checkouts_full_during_fault"]
        )
        assert totals["reads_full_during_fault"] <= totals["reads_during_fault"]
        assert (
            totals["checkouts_full_during_fault"] + totals["checkouts_degraded_during_fault"]
            <= totals["checkouts_during_fault"]
        )
        if totals["reads_during_fault"]:
            assert totals["reads_full_share_during_fault"] == pytest.approx(
                totals["reads_full_during_fault"] / totals["reads_during_fault"]
            )
        if name != "resilience":  # only the protected arm has a fallback
            assert totals["degraded"] == 0, name
        assert totals["orders_workers"] == _cascade.ORDERS_WORKERS
        assert totals["orders_peak_busy"] <= _cascade.ORDERS_WORKERS


def test_marks_and_notes_follow_the_figures(quick_run: dict[str, Any]) -> None:
    """A mark only where the figure is better than plain's; a note where resilience is not."""
    for scenario in registered():
        part = quick_run["report"]["scenarios"][scenario.name]
        names = list(part["arms"])
        rows = {row.key: row for row in scenario.rows}
        for line in part["table"]:
            row = rows[line["key"]]
            values = [part["arms"][name]["totals"].get(row.key) for name in names]
            for i, name in enumerate(names):
                expected = (
                    i > 0 and row.versus_baseline and _report.better(row, values[i], values[0])
                )
                assert line["better_than_baseline"][i] == expected, (line, name)
                assert line["cells"][i].endswith(_report.MARK) == expected
            protected = names.index("resilience")
            if not row.versus_baseline:
                assert values[0] is None, line  # plain has no hop: "no hop", not 0
                assert "plain" not in line["note"], line
            elif row.better is not None and not _report.better(row, values[protected], values[0]):
                assert "NOT better" in line["note"] or "same as" in line["note"], line


def test_piped_output_is_plain_lines_within_80_columns(quick_run: dict[str, Any]) -> None:
    """No escape codes, no progress bars when piped; every line fits 80 columns."""
    stdout = quick_run["stdout"]
    assert "\x1b[" not in stdout
    assert "━" not in stdout
    assert "0:00:00" not in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80
    for scenario in registered():
        for row in scenario.rows:  # labels are never cut in two
            assert f" {row.label.strip()} " in stdout, row.label
    assert "resilience: payments hangs (from " in stdout  # a line per phase
    assert "better than plain" in stdout


def test_outputs_land_in_the_chosen_folder(quick_run: dict[str, Any]) -> None:
    """Plots go to --plot-dir, never the working directory; the Markdown tables are written."""
    directory = quick_run["directory"]
    report = quick_run["report"]
    for part in report["scenarios"].values():
        assert Path(part["plot"]).parent == directory / "plots"
        assert Path(part["plot"]).is_file()
    assert not list(directory.glob("*.png"))
    tables = (directory / "tables.md").read_text()
    assert "| measured | plain |" in tables
    assert "| measured | naive retries | resilience | note |" in tables


def test_no_haproxy_is_left_running_after_the_run(quick_run: dict[str, Any]) -> None:
    """The sidecars the run started (their pids are in the JSON) are gone."""
    arms = quick_run["report"]["scenarios"]["cascade"]["arms"]
    if "haproxy" not in arms:
        require_haproxy()
    pids = arms["haproxy"]["sidecar_pids"]
    assert len(pids) == 2
    for pid in pids:
        assert not _is_haproxy(pid)


def _is_haproxy(pid: int) -> bool:
    try:
        return b"haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


_INTERRUPTED_ARM = """
import json, os, signal, sys
from pathlib import Path
from resilience.demo._scenario import Options
from resilience.demo.scenarios import _cascade


# A terminal's Ctrl-C, whatever started this (a background job ignores SIGINT).
signal.signal(signal.SIGINT, signal.default_int_handler)


def haproxy_children():
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":\\t", 1) for line in text.splitlines() if ":\\t" in line)
        if fields.get("Name") == "haproxy" and fields.get("PPid", "").strip() == str(os.getpid()):
            found.append(int(status.parent.name))
    return found


report = {}
for name, error in (("SIGINT", KeyboardInterrupt), ("RuntimeError", RuntimeError)):
    seen = []

    def tick(now):
        if now > 0.3 and not seen:
            seen.extend(haproxy_children())
            if name == "SIGINT":  # Ctrl-C: the signal, through asyncio.run's handler
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise error("in the middle")

    try:
        _cascade.run("sidecar", _cascade.plan(Options(duration=3.0)), Options(clients=2), tick)
    except error:
        report[name] = {"seen": seen, "left": haproxy_children()}
print(json.dumps(report))
"""


def _run_python(script: str) -> str:
    """Run `script` in a fresh interpreter; its standard output (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sidecar_arm_stops_haproxy_when_interrupted() -> None:
    """Ctrl-C (a real SIGINT) or a failure in the middle of the arm leaves no haproxy behind."""
    require_haproxy()
    report = json.loads(_run_python(_INTERRUPTED_ARM))
    assert set(report) == {"SIGINT", "RuntimeError"}
    for pids in report.values():
        assert len(pids["seen"]) == 2  # one sidecar per caller was running
        assert pids["left"] == []
        for pid in pids["seen"]:
            assert not _is_haproxy(pid)


def test_generated_haproxy_config_mirrors_the_library_settings() -> None:
    """Timeouts, retries with retry-on, layer-7 breaker and health checks; haproxy -c accepts it."""
    require_haproxy()
    hop = _cascade.ORDERS_TO_PAYMENTS
    config = _sidecar.haproxy_config(hop, listen_port=10001, server="127.0.0.1:10002")
    assert hop.breaker is not None
    for expected in (
        "timeout server 500ms",
        "retries 1",
        "retry-on conn-failure empty-response response-timeout 500 502 503 504",
        "http-request set-header Idempotency-Key %[uuid]",
        "option httpchk GET /health",
        f"error-limit {hop.breaker.consecutive_failures} on-error mark-down",
        "observe layer7",
        "downinter 1000ms rise 1",
        f"maxconn {hop.max_limit}",
        "no deadline propagation",
        "no retry budget",
    ):
        assert expected in config
    gateway = _sidecar.haproxy_config(
        _cascade.GATEWAY_TO_ORDERS, listen_port=10003, server="127.0.0.1:10004"
    )
    assert "retry-on none" in gateway
    assert "timeout server 2000ms" in gateway
    assert "timeout queue 500ms" in gateway
    assert f"maxconn {_cascade.GATEWAY_TO_ORDERS.max_limit}" in gateway
    assert "check" not in gateway.split("backend", 1)[1]
    for text in (config, gateway):
        checked = _sidecar.check_config(text)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_what_haproxy_cannot_mirror_is_listed_in_its_config_and_on_the_page() -> None:
    """docs/why.md: what HAProxy cannot mirror; the generated configuration says the same."""
    hop = _cascade.ORDERS_TO_PAYMENTS
    config = _sidecar.haproxy_config(hop, listen_port=10001, server="127.0.0.1:10002", maxconn=480)
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "why.md").read_text().split())
    for item in _sidecar.NOT_MIRRORED:
        assert f"# - {item}" in config
        assert f"- {item.split(':')[0]}:" in page


def test_without_haproxy_the_arm_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sidecar arm is skipped with the command that installs haproxy."""
    monkeypatch.setattr(_sidecar, "find_haproxy", lambda: None)
    reason = _sidecar.unavailable()
    assert reason is not None
    assert "apt-get install haproxy" in reason


def test_recovery_time_is_the_first_second_above_99_percent_full() -> None:
    """Seconds from the end of the fault to the first one-second window > 99% full."""

    def samples(failed_until: float, end: float = 10.0) -> list[Sample]:
        return [
            Sample(t / 100, 0.01, "failed" if t / 100 < failed_until else "full")
            for t in range(int(end * 100))
        ]

    assert recovery_seconds(samples(5.0), 5.0, 10.0) == 0.0
    assert recovery_seconds(samples(5.3), 5.0, 10.0) == 1.0
    assert recovery_seconds(samples(7.0), 5.0, 10.0) == 2.0
    assert recovery_seconds(samples(9.5), 5.0, 10.0) is None  # not within the run
    # Exactly 99% full is not "above 99%".
    window = [Sample(5.0 + i / 100, 0.01, "full") for i in range(99)]
    assert recovery_seconds([*window, Sample(5.995, 0.01, "failed")], 5.0, 6.0) is None
    # A degraded answer is not a full one.
    degraded = [Sample(5.0 + i / 100, 0.01, "degraded") for i in range(100)]
    assert recovery_seconds(degraded, 5.0, 6.0) is None


def test_outcomes_must_add_up() -> None:
    """A count that does not add up is an error, not a figure."""
    samples = [Sample(0.1, 0.1, "full"), Sample(0.2, 0.1, "degraded"), Sample(1.5, 0.1, "failed")]
    assert count_outcomes(samples) == {"answers": 3, "full": 1, "degraded": 1, "failed": 1}
    assert [b.answers for b in per_second(samples, 2.0)] == [2, 1]
    with pytest.raises(AssertionError, match="not the 4 answers"):
        check_outcomes({"answers": 4, "full": 1, "degraded": 1, "failed": 1})


def _fake_scenario(why: dict[str, str]) -> Scenario:
    def never(plan: Plan, options: Options, tick: Any) -> ArmResult:
        raise AssertionError("not run")

    return Scenario(
        name="fake",
        order=0,
        plan=lambda options: Plan((Phase("fault", 1.0, fault=True),)),
        header=lambda plan, options: "fake",
        arms=(
            Arm("plain", "baseline", never),
            Arm("sidecar", "rival", never),
            Arm("resilience", "protected", never),
        ),
        rows=(
            Row("full", "answered in full", "{:.0f}", "higher"),
            Row("p99", "p99", "{:.2f} s", "lower"),
            Row("recover", "recover", "{:.0f} s", "lower", missing="not in run"),
            Row("degraded", "degraded", "{:.0f}", None),
        ),
        why_behind=why,
    )


def test_the_table_marks_only_real_improvements() -> None:
    """Better than plain gets the mark; equal as shown does not; losses are noted and explained."""
    scenario = _fake_scenario({"p99": "because of the test"})

    def result(**totals: Any) -> ArmResult:
        return ArmResult([], totals)

    results = {
        "plain": result(full=10, p99=1.0, recover=0.0, degraded=0),
        "sidecar": result(full=10, p99=0.5, recover=None, degraded=0),
        "resilience": result(full=12, p99=1.001, recover=1.0, degraded=5),
    }
    lines = {line.key: line for line in _report.compare(scenario, results)}
    assert lines["full"].cells == ["10", "10", f"12 {_report.MARK}"]
    assert lines["full"].note == ""
    assert lines["p99"].cells == ["1.00 s", f"0.50 s {_report.MARK}", "1.00 s"]
    assert lines["p99"].note == "same as plain; sidecar better"
    assert lines["p99"].behind == ["sidecar"]
    assert lines["recover"].cells == ["0 s", "not in run", "1 s"]
    assert lines["recover"].note == "NOT better than plain"
    assert lines["degraded"].cells == ["0", "0", "5"]
    assert lines["degraded"].note == ""
    notes = _report.closing_notes(scenario, results, list(lines.values()))
    assert notes == ["resilience is behind sidecar on 'p99': because of the test"]


def test_the_table_leaves_out_an_arm_that_did_not_run() -> None:
    """Without haproxy the other arms still make a table (docs/why.md: "runs the other arms")."""
    scenario = _fake_scenario({})
    results = {
        "plain": ArmResult([], {"full": 10, "p99": 1.0, "recover": 0.0, "degraded": 0}),
        "resilience": ArmResult([], {"full": 12, "p99": 0.5, "recover": 1.0, "degraded": 5}),
    }
    lines = {line.key: line for line in _report.compare(scenario, results)}
    assert lines["full"].cells == ["10", f"12 {_report.MARK}"]
    assert lines["p99"].behind == []
    text = _report.markdown(scenario, "fake", results, list(lines.values()), {"sidecar": "why"})
    assert "| measured | plain | resilience | note |" in text
    assert "- sidecar did not run: why" in text


def test_a_scenario_needs_one_baseline_first_and_one_protected_arm() -> None:
    """The table code relies on it: the first arm is the baseline, one arm is protected."""
    scenario = _fake_scenario({})
    with pytest.raises(ValueError, match="baseline"):
        replace(scenario, arms=scenario.arms[1:])
    with pytest.raises(ValueError, match="protected"):
        replace(scenario, arms=scenario.arms[:2])


def test_header_times_match_the_plan() -> None:
    """30 s: payments hangs from 7.5 s to 18 s (not "8 s"); --quick: from 1.25 s (not "1.2")."""
    plan = _cascade.plan(Options())
    assert plan.duration == 30.0
    assert "from 7.5 s to 18 s" in _cascade.header(plan, Options())
    quick = _cascade.plan(Options(quick=True))
    assert "for 5 s; payments hangs from 1.25 s to 3 s" in _cascade.header(quick, Options())
    assert [seconds_text(t) for t in (0.0, 0.75, 1.05, 2.5, 18.0)] == [
        "0",
        "0.75",
        "1.05",
        "2.5",
        "18",
    ]


def test_the_page_states_each_scenario_as_the_code_runs_it() -> None:
    """docs/why.md: each scenario's setup, as the page states it, is what the code runs.

    Load, SLA, workers and breaker of the cascade; `--quick` alone runs the
    cascade, 5 s per arm; the storm's service and trigger; the tail's header.
    """
    assert "20 clients for 30 s" in _cascade.header(_cascade.plan(Options()), Options())
    assert _cascade.SLA_SECONDS == 2.0
    assert _cascade.ORDERS_WORKERS == 5
    hop = _cascade.ORDERS_TO_PAYMENTS
    assert (hop.attempt_timeout, hop.attempts, hop.initial_limit, hop.max_limit) == (
        0.5,
        2,
        20,
        200,
    )
    breaker = hop.breaker
    assert breaker is not None
    assert (
        breaker.consecutive_failures,
        breaker.failure_rate_threshold,
        breaker.window_seconds,
        breaker.open_duration,
    ) == (5, 0.5, 5.0, 1.0)
    assert _cascade.hop_calls(Options()) == 300  # "300 calls straight ... and 300 through"
    assert registered()[0] is _cascade.SCENARIO  # the default --scenario
    assert _cascade.plan(Options(quick=True)).duration == 5.0
    storm = _retry_storm.STORM
    assert (storm.workers, storm.service_time, storm.arrival_rate) == (4, 0.02, 110.0)
    assert (storm.slowdown, storm.client_timeout) == (8.0, 0.3)
    start, end = _retry_storm.plan(Options()).fault
    assert end - start == 1.5
    page = (Path(__file__).resolve().parents[1] / "docs" / "why.md").read_text()
    assert f"<!-- {_tail.header(_tail.plan(Options()), Options())} -->" in page


@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--plot-dir", "a-file", "exists and is not a directory"),
        ("--json", "missing/out.json", "does not exist"),
        ("--json", ".", "is a directory"),
        ("--markdown", "missing/t.md", "does not exist"),
    ],
)
def test_output_options_are_checked_before_the_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    complaint: str,
) -> None:
    """A bad --plot-dir, --json or --markdown stops the demo at once, naming the option."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(demo, "_run", lambda *args: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_info:
        demo.main([option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} {value}: " in err
    assert complaint in err


@pytest.mark.parametrize("module", ["rich", "matplotlib"])
def test_without_the_demo_extra_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], module: str
) -> None:
    """No rich (or matplotlib): why it cannot run, how to install, a non-zero exit, no traceback."""
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    monkeypatch.setattr(demo, "_run", lambda *args: pytest.fail("the run started"))
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert module in err
    assert "pip install 'resilience[demo]'" in err
    assert "Traceback" not in err


def test_cascade_protected_arm_uses_the_adaptive_limits() -> None:
    """The protected orders sheds through a ConcurrencyLimit; its transports limit per origin."""
    from resilience.middleware import ASGIConcurrencyLimitMiddleware

    counters: dict[str, float] = {}
    url = "http://127.0.0.1:1"
    app, pool = _cascade.orders_app("resilience", url, counters)
    assert isinstance(app, ASGIConcurrencyLimitMiddleware)
    assert pool.workers == _cascade.ORDERS_WORKERS
    for mode in ("plain", "sidecar"):
        app, pool = _cascade.orders_app(mode, url, counters)
        assert app is pool  # the same workers, nothing in front of them
        assert pool.workers == _cascade.ORDERS_WORKERS


def test_a_request_waits_for_a_worker_held_by_a_hung_one() -> None:
    """The cascade's mechanism (docs/why.md): a read waits while hung requests hold the workers.

    It needs nothing from the hung dependency, yet waits in the queue until a worker frees.
    """

    async def scenario() -> list[str]:
        release = asyncio.Event()
        done: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/hung":
                await release.wait()
            done.append(scope["path"])

        pool = WorkerPool(app, 2)
        hung = [asyncio.create_task(pool({"type": "http", "path": "/hung"}, None, None))]
        hung.append(asyncio.create_task(pool({"type": "http", "path": "/hung"}, None, None)))
        read = asyncio.create_task(pool({"type": "http", "path": "/read"}, None, None))
        for _ in range(10):
            await asyncio.sleep(0)
        assert done == []
        assert not read.done()
        assert (pool.busy.now, pool.queued.now) == (2, 1)
        release.set()
        await asyncio.gather(*hung, read)
        assert (pool.busy.peak, pool.queued.peak) == (2, 1)
        return done

    assert asyncio.run(scenario()) == ["/hung", "/hung", "/read"]


def test_the_queue_counts_only_requests_that_wait() -> None:
    """The queue's peak ("peak queue at orders") is 0 when a worker was always free."""

    async def scenario() -> WorkerPool:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(0)

        pool = WorkerPool(app, 2)
        for _ in range(5):
            await pool({"type": "http", "path": "/"}, None, None)
        return pool

    pool = asyncio.run(scenario())
    assert (pool.busy.peak, pool.queued.peak) == (1, 0)


def test_the_traffic_mix_and_outcomes_of_the_cascade() -> None:
    """A read is full or failed; a checkout is full (paid), degraded (pending) or failed."""
    import httpx

    def reply(status: int, body: dict[str, str]) -> httpx.Response:
        return httpx.Response(status, json=body)

    assert _cascade.MIX.count("read") == 4
    assert _cascade.MIX.count("checkout") == 1
    assert _cascade.ORDERS_WORKERS == 5  # docs/why.md: "Orders has 5 workers in every arm"
    assert _cascade.outcome("read", reply(200, {"status": "shipped"})) == "full"
    assert _cascade.outcome("read", reply(503, {"error": "x"})) == "failed"
    assert _cascade.outcome("checkout", reply(200, {"payment": "done"})) == "full"
    assert _cascade.outcome("checkout", reply(200, {"payment": "pending"})) == "degraded"
    assert _cascade.outcome("checkout", reply(200, {"status": "shipped"})) == "failed"
    assert _cascade.outcome("checkout", reply(502, {"error": "x"})) == "failed"


def test_load_mix_kinds_keep_their_shares() -> None:
    """`run_load(mix=...)`: the n-th request of the run is of kind mix[n % len(mix)]."""
    from resilience.demo._harness import run_load

    async def call(client: Any, kind: str) -> Any:
        await asyncio.sleep(0.001 if kind == "a" else 0.005)
        return "full"

    samples = asyncio.run(
        run_load(call, clients=3, duration=0.2, client_timeout=1.0, mix=("a", "a", "b"))
    )
    kinds = [sample.kind for sample in samples]
    assert kinds.count("b") == len(kinds) // 3


def test_a_row_plain_has_no_figure_for_marks_nobody() -> None:
    """Plain httpx has no hop: "no hop", no mark against it; resilience vs the sidecar still.

    (docs/why.md: a figure is marked only where it is better than plain's.)
    """
    scenario = replace(
        _fake_scenario({}),
        rows=(Row("hop", "hop", "{:.3f} ms", "lower", missing="no hop", versus_baseline=False),),
    )
    results = {
        "plain": ArmResult([], {"hop": None}),
        "sidecar": ArmResult([], {"hop": -0.2}),
        "resilience": ArmResult([], {"hop": 0.1}),
    }
    (line,) = _report.compare(scenario, results)
    assert line.cells == ["no hop", "-0.200 ms", "0.100 ms"]
    assert line.better_than_baseline == [False, False, False]
    assert line.note == "sidecar better"


def test_a_negative_hop_latency_is_called_noise() -> None:
    """A hop cannot make calls faster: the closing notes say a negative figure is noise."""
    results = {
        "plain": ArmResult([], {"hop_added_median_ms": None}),
        "haproxy": ArmResult([], {"hop_added_median_ms": -0.287}),
        "resilience": ArmResult([], {"hop_added_median_ms": 0.1}),
    }
    (note,) = _cascade.negative_hop_notes(results)
    assert note.startswith("haproxy: ")
    assert "noise" in note


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--duration", "1e9"], "at most 3600"),
        (["--duration", "0"], "above 0"),
        (["--clients", "0"], "from 1 to 1000"),
        (["--clients", "5000"], "from 1 to 1000"),
        (["--metrics-port", "70000"], "from 1 to 65535"),
        (["--scenario", "unknown"], "invalid choice"),
    ],
)
def test_bad_numbers_stop_the_demo_before_the_run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    complaint: str,
) -> None:
    """Out-of-range options exit 2 with a message before anything runs."""
    monkeypatch.setattr(demo, "_run", lambda *args: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_info:
        demo.main(arguments)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_too_many_clients_for_the_open_file_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past `ulimit -n` the requests, not the run, would fail: the demo refuses first."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 1024))
    monkeypatch.setattr(demo, "_run", lambda *args: pytest.fail("the run started"))
    with pytest.raises(SystemExit):
        demo.main(["--clients", "100"])
    assert "ulimit -n" in capsys.readouterr().err
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: raised.append(limits))
    monkeypatch.setattr(demo, "_run", lambda *args: 0)
    assert demo.main(["--clients", "100"]) == 0
    assert raised  # its own limit raised, within the hard one
    assert raised[0][0] >= 2000


def test_a_taken_metrics_port_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--metrics-port on a port in use: exit 2, saying so, before any arm runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = demo.main(
            ["--metrics-port", str(port), "--plot-dir", str(tmp_path), "--duration", "1"]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert f"--metrics-port {port}: cannot listen" in err
    assert "Traceback" not in err


_SIDECAR_UNDER_1024_FILES = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from resilience.demo import _sidecar
from resilience.demo.scenarios import _cascade
with _sidecar.sidecar(_cascade.ORDERS_TO_PAYMENTS, "http://127.0.0.1:1") as (url, pid):
    print(_sidecar.global_maxconn(), url)
"""


def test_haproxy_starts_under_a_1024_open_file_limit() -> None:
    """A common `ulimit -n`: HAProxy's maxconn fits it (before: "Cannot raise FD limit")."""
    require_haproxy()
    maxconn = int(_run_python(_SIDECAR_UNDER_1024_FILES).split()[0])
    assert _sidecar.MIN_MAXCONN <= maxconn <= (1024 - 64) // 2


@pytest.mark.parametrize(
    ("hard_limit", "maxconn"), [(1024, 480), (100_000, 4096), (None, 4096), (300, 256)]
)
def test_haproxy_maxconn_is_4096_lowered_to_fit_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, hard_limit: int | None, maxconn: int
) -> None:
    """docs/why.md: `global maxconn` 4096, lowered to fit `ulimit -n` (1024 allows 480)."""
    import resource

    hard = resource.RLIM_INFINITY if hard_limit is None else hard_limit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (hard, hard))
    assert _sidecar.global_maxconn() == maxconn


def test_markdown_keeps_the_labels_indentation() -> None:
    """The Markdown table shows which rows are parts of the row above (docs/why.md)."""
    scenario = replace(
        _fake_scenario({}),
        rows=(
            Row("full", "fault: in full", "{:.0f}", "higher"),
            Row("reads", "  reads", "{:.0f}", "higher"),
        ),
    )
    results = {name: ArmResult([], {"full": 1, "reads": 1}) for name in ("plain", "resilience")}
    lines = _report.compare(scenario, results)
    text = _report.markdown(scenario, "fake", results, lines, {})
    assert "| fault: in full | 1 | 1 |" in text
    assert "| &nbsp;&nbsp;reads | 1 | 1 |" in text


def _make_dry_run(directory: Path, target: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-f", str(directory / "Makefile"), target],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=directory,
    )
    return result.stdout


def test_plots_and_figures_go_to_demo_output_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/development.md, docs/why.md: plots and the JSON go to `demo-output/` (git-ignored)."""
    monkeypatch.chdir(tmp_path)
    args = demo._parse([], [scenario.name for scenario in registered()])
    assert (args.plot_dir, args.json) == ("demo-output", None)  # the JSON: in PLOT_DIR
    assert (tmp_path / "demo-output").is_dir()
    root = Path(__file__).resolve().parents[1]
    assert "demo-output/" in (root / ".gitignore").read_text().split()


def test_each_module_in_the_scenarios_package_is_a_registered_scenario() -> None:
    """docs/development.md: a scenario is one module in `resilience/demo/scenarios/`, any name."""
    import pkgutil

    from resilience.demo import scenarios

    modules = {f"{scenarios.__name__}.{m.name}" for m in pkgutil.iter_modules(scenarios.__path__)}
    assert modules == {scenario.plan.__module__ for scenario in registered()}


def test_make_demo_installs_only_the_demo_extra_and_make_test_still_gets_the_dev_tools(
    tmp_path: Path,
) -> None:
    """docs/development.md: `make demo` installs the package and its `demo` extra only.

    A later `make test` still installs the dev tools (its own stamp), and the other way round.
    """
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "Makefile", tmp_path / "Makefile")
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    demo_install = 'pip install --editable ".[demo]";'
    dev_install = 'pip install --editable ".[demo]" --group dev'

    fresh = _make_dry_run(tmp_path, "demo")
    assert demo_install in fresh
    assert "--group dev" not in fresh
    assert "-m resilience.demo --scenario all" in fresh

    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed-demo").touch()  # `make demo` ran: the demo-only venv
    after_demo = _make_dry_run(tmp_path, "test")
    assert dev_install in after_demo
    assert "pip install" not in _make_dry_run(tmp_path, "demo")  # nothing to redo

    (venv / ".installed-dev").touch()  # `make test` ran: the full dev venv
    assert "pip install" not in _make_dry_run(tmp_path, "test")
    (venv / ".installed-demo").unlink()  # a dev venv, then `make demo`: the extra only
    assert dev_install not in _make_dry_run(tmp_path, "demo")
