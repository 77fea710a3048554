from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import Outcome
from resilience._outcome import Classifier, ExceptionFilter


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Subtransient(Transient):
    pass


def test_default_classification() -> None:
    """Exceptions are failures, returned values successes (DESIGN section 4)."""
    classifier = Classifier()
    assert classifier.classify_exception(ValueError()) is Outcome.FAILURE
    assert classifier.classify_result(None) is Outcome.SUCCESS
    assert classifier.classify_result(503) is Outcome.SUCCESS


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), asyncio.CancelledError()],
    ids=type,
)
def test_base_exceptions_are_always_ignored(exc: BaseException) -> None:
    """Cancellation and interpreter exits never count, whatever record= says."""
    classifier = Classifier(record=lambda e: True)
    assert classifier.classify_exception(exc) is Outcome.IGNORED


def test_ignore_wins_over_record() -> None:
    """An exception matched by both ignore= and record= is ignored."""
    classifier = Classifier(record=(Transient,), ignore=(Subtransient,))
    assert classifier.classify_exception(Transient()) is Outcome.FAILURE
    assert classifier.classify_exception(Subtransient()) is Outcome.IGNORED


def test_exceptions_outside_record_are_ignored_not_successes() -> None:
    """An unrecorded exception says nothing about health, so it is IGNORED."""
    classifier = Classifier(record=Transient)
    assert classifier.classify_exception(Permanent()) is Outcome.IGNORED


def test_predicates_and_types_mix() -> None:
    """record= and ignore= take types, predicates, or a tuple of both."""
    classifier = Classifier(
        record=[Transient, lambda e: isinstance(e, OSError) and e.errno == 111],
        ignore=lambda e: "ignore me" in str(e),
    )
    assert classifier.classify_exception(ConnectionRefusedError(111, "refused")) is Outcome.FAILURE
    assert classifier.classify_exception(OSError(2, "missing")) is Outcome.IGNORED
    assert classifier.classify_exception(Transient("ignore me")) is Outcome.IGNORED


def test_failure_if_turns_results_into_failures() -> None:
    """A returned value can be a failure (an HTTP 503, say)."""
    classifier = Classifier(failure_if=lambda status: status >= 500)  # type: ignore[operator]
    assert classifier.classify_result(503) is Outcome.FAILURE
    assert classifier.classify_result(404) is Outcome.SUCCESS


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"record": None}, TypeError, "record="),
        ({"record": "ValueError"}, TypeError, "record="),
        ({"record": int}, TypeError, "int is not an exception"),
        ({"record": (ValueError, 3)}, TypeError, "record="),
        ({"ignore": None}, TypeError, "ignore="),
        ({"record": KeyboardInterrupt}, ValueError, "KeyboardInterrupt"),
        ({"ignore": (asyncio.CancelledError,)}, ValueError, "CancelledError"),
        ({"record": BaseException}, ValueError, "BaseException"),
        ({"failure_if": 503}, TypeError, "failure_if="),
    ],
)
def test_bad_specs_are_rejected_at_construction(kwargs, error, match) -> None:
    """A wrong record=/ignore=/failure_if= fails at construction, naming the parameter."""
    with pytest.raises(error, match=match):
        Classifier(**kwargs)


def test_empty_filter_matches_nothing() -> None:
    """ignore=() is the empty filter: falsy, and it matches no exception."""
    empty = ExceptionFilter((), param="ignore")
    assert not empty
    assert not empty.matches(ValueError())
    assert ExceptionFilter(ValueError, param="on")
    assert "ValueError" in repr(ExceptionFilter(ValueError, param="on"))


EXCEPTIONS = st.sampled_from(
    [ValueError(), Transient(), Subtransient(), Permanent(), KeyboardInterrupt(), SystemExit()]
)
TYPE_SETS = st.lists(st.sampled_from([ValueError, Transient, Subtransient, Permanent, Exception]))


@given(exc=EXCEPTIONS, record=TYPE_SETS, ignore=TYPE_SETS)
def test_classification_matches_the_rules(exc, record, ignore) -> None:
    """For any record/ignore sets, the outcome is exactly what DESIGN section 4 says."""
    outcome = Classifier(record=tuple(record), ignore=tuple(ignore)).classify_exception(exc)
    if not isinstance(exc, Exception) or any(isinstance(exc, t) for t in ignore):
        assert outcome is Outcome.IGNORED
    elif any(isinstance(exc, t) for t in record):
        assert outcome is Outcome.FAILURE
    else:
        assert outcome is Outcome.IGNORED
