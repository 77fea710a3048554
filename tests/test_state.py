from __future__ import annotations

from resilience import State


def test_state_values_are_the_metric_label_values() -> None:
    """State values are what Prometheus labels and logs show (DESIGN section 11)."""
    assert [state.value for state in State] == [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "disabled",
        "metrics_only",
    ]
    assert str(State.HALF_OPEN) == "half_open"
