from __future__ import annotations

import pickle

import pytest

import resilience
from resilience import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    ResilienceError,
    RetryBudgetExhaustedError,
    State,
)

ERRORS = [
    CircuitOpenError("payments", State.OPEN, 12.5),
    CircuitOpenError("payments", State.FORCED_OPEN, None),
    BulkheadFullError("db", 10, 0.25),
    RetryBudgetExhaustedError("orders"),
    DeadlineExceededError("checkout", 2.0),
    DeadlineExceededError(),
]


@pytest.mark.parametrize("error", ERRORS, ids=repr)
def test_every_error_is_a_resilience_error(error: ResilienceError) -> None:
    """One `except ResilienceError` catches everything the library raises itself."""
    assert isinstance(error, ResilienceError)
    assert isinstance(error, Exception)


@pytest.mark.parametrize("error", ERRORS, ids=repr)
def test_errors_pickle_with_attributes_and_notes(error: ResilienceError) -> None:
    """Errors cross process boundaries intact: type, attributes, message and notes."""
    error.add_note("attempt 3 of 3")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert vars(clone) == vars(error)
    assert str(clone) == str(error)
    assert clone.__notes__ == ["attempt 3 of 3"]


def test_circuit_open_error_says_who_and_when() -> None:
    """The message names the breaker, its state and the wait until the next probe."""
    error = CircuitOpenError("payments", State.OPEN, 12.5)
    assert (error.name, error.state, error.retry_after) == ("payments", State.OPEN, 12.5)
    assert str(error) == "circuit breaker 'payments' is open; next probe allowed in 12.500s"
    forced = CircuitOpenError("payments", State.FORCED_OPEN, None)
    assert "forced_open" in str(forced)
    assert "until reset" in str(forced)


def test_deadline_exceeded_is_a_builtin_timeout_error() -> None:
    """`except TimeoutError` catches it; OSError's errno parsing does not garble it."""
    error = DeadlineExceededError("checkout", 2.0)
    assert isinstance(error, TimeoutError)
    assert error.errno is None
    assert str(error) == "'checkout': deadline exceeded (budget 2.000s)"
    assert str(DeadlineExceededError()) == "deadline exceeded"
    with pytest.raises(TimeoutError):
        raise error


def test_bulkhead_and_budget_messages() -> None:
    """The other errors carry their policy's name and numbers."""
    assert str(BulkheadFullError("db", 10, 0.25)) == (
        "bulkhead 'db' is full (10 concurrent calls); rejected after waiting 0.250s"
    )
    assert str(RetryBudgetExhaustedError("orders")) == "retry budget 'orders' is exhausted"


def test_errors_are_exported_at_the_top_level() -> None:
    """`resilience.CircuitOpenError` is the same class as `resilience.errors.CircuitOpenError`."""
    assert resilience.CircuitOpenError is resilience.errors.CircuitOpenError
