"""The cascading-failure lab: `python -m resilience.demo` (needs the `demo` extra).

Layout: `_scenario.py` says what a scenario is (a name, a plan of phases, a
set of arms, the rows of its table) and keeps the registry; `_report.py`
turns any scenario's results into its table, plot, JSON and Markdown;
`_harness.py` has the loopback servers, the load loops (clients, or arrivals
at a fixed rate) and the statistics;
`_hop.py` and `_sidecar.py` build one hop's resilient transport and its
HAProxy sidecar from the same settings; `scenarios/` holds the scenarios.

Adding a scenario: add one module to `resilience/demo/scenarios/` that
builds a `_scenario.Scenario` and calls `_scenario.register()` at import
(see `scenarios/_retry_storm.py` for a small one, and docs/development.md).
The package imports every module in that folder, and the table code knows
no scenario, so nothing else needs editing.
"""
