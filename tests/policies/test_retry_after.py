"""Retry-After: one rule for every value (RFC 9110 section 10.2.3), wherever it comes from."""

from __future__ import annotations

import calendar
import datetime
import math
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import Retry, parse_retry_after
from resilience._backoff import retry_after_of
from resilience.testing import FakeClock

DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
LONG_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def imf_fixdate(t: float) -> str:
    g = time.gmtime(t)
    return (
        f"{DAYS[g.tm_wday]}, {g.tm_mday:02d} {MONTHS[g.tm_mon - 1]} {g.tm_year:04d} "
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT"
    )


def rfc850_date(t: float) -> str:
    g = time.gmtime(t)
    return (
        f"{LONG_DAYS[g.tm_wday]}, {g.tm_mday:02d}-{MONTHS[g.tm_mon - 1]}-{g.tm_year % 100:02d} "
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT"
    )


def asctime_date(t: float) -> str:
    g = time.gmtime(t)
    return (
        f"{DAYS[g.tm_wday]} {MONTHS[g.tm_mon - 1]} {g.tm_mday:2d} "
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} {g.tm_year:04d}"
    )


# -- parse_retry_after: strings ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "²",  # a superscript: str.isdigit() is true, float() fails
        "٣",  # ARABIC-INDIC DIGIT THREE
        "\uff13",  # FULLWIDTH DIGIT THREE
        "1²",
        "१०",  # Devanagari
        "1.5",  # delay-seconds is 1*DIGIT: no decimals
        "1e3",
        "+5",
        "-0",
        "-1",
        "0x10",
        "1_000",
        "5 5",
        "",
        " ",
        "\t",
        "\n5",  # only SP and HTAB are optional whitespace
        "5\r\n",
        "\u30005",  # IDEOGRAPHIC SPACE
        "5\xa0",  # NO-BREAK SPACE
        "inf",
        "nan",
        "soon",
    ],
)
def test_only_ascii_digits_are_delay_seconds(text: str) -> None:
    """delay-seconds = 1*DIGIT (ASCII): anything else is None, never an error."""
    assert parse_retry_after(text) is None
    assert parse_retry_after(text.encode("utf-8")) is None


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("120", 120.0), ("007", 7.0)])
def test_ascii_digits_are_seconds(text: str, seconds: float) -> None:
    assert parse_retry_after(text) == seconds
    assert parse_retry_after(text.encode("ascii")) == seconds


@pytest.mark.parametrize("text", [" 7", "7 ", "\t7\t", " \t 7 \t "])
def test_optional_whitespace_around_the_value_is_stripped(text: str) -> None:
    """OWS (SP / HTAB) around a field value is not part of it (RFC 9110 section 5.5)."""
    assert parse_retry_after(text) == 7.0


def test_a_delay_too_long_for_a_float_is_infinite() -> None:
    """Digits beyond float range (and beyond int()'s 4300-digit limit) are inf, not an error."""
    assert parse_retry_after("9" * 400) == math.inf
    assert parse_retry_after("9" * 5000) == math.inf


# -- parse_retry_after: HTTP-dates ----------------------------------------------------------


@pytest.mark.parametrize("form", [imf_fixdate, rfc850_date, asctime_date])
def test_the_three_http_date_forms_parse(form) -> None:
    """RFC 9110 section 5.6.7: recipients accept IMF-fixdate, RFC 850 and asctime."""
    assert parse_retry_after(form(NOW + 30), now=NOW) == 30.0
    assert parse_retry_after(form(NOW - 30), now=NOW) == 0.0


def test_asctime_single_digit_day_is_space_padded() -> None:
    """date3 = month SP ( 2DIGIT / ( SP DIGIT ) ): "Nov  6" is the 6th."""
    when = calendar.timegm((1994, 11, 6, 8, 49, 37))
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now=when - 5) == 5.0
    assert parse_retry_after("Sun Nov 06 08:49:37 1994", now=when - 5) == 5.0


def test_rfc850_two_digit_years_are_at_most_50_years_ahead() -> None:
    """A two-digit year more than 50 years in the future is the most recent past one."""
    now = calendar.timegm((2026, 1, 1, 0, 0, 0))
    in_1994 = calendar.timegm((1994, 11, 6, 8, 49, 37))
    in_2030 = calendar.timegm((2030, 11, 6, 8, 49, 37))
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now=in_1994 - 1) == 1.0
    assert parse_retry_after("Wednesday, 06-Nov-30 08:49:37 GMT", now=now) == in_2030 - now
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now=now) == 0.0
    # The 50 years are counted to the second, not by calendar year alone.
    start_of_2024 = calendar.timegm((2024, 1, 1, 0, 0, 0))
    in_2073 = calendar.timegm((2073, 11, 6, 8, 49, 37))
    assert parse_retry_after("Monday, 06-Nov-74 08:49:37 GMT", now=start_of_2024) == 0.0
    assert (
        parse_retry_after("Monday, 06-Nov-73 08:49:37 GMT", now=start_of_2024)
        == in_2073 - start_of_2024
    )


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 +0000",  # a numeric zone: RFC 5322, not HTTP
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "6 Nov 1994 08:49:37 GMT",  # no day name
        "Sun, 6 Nov 1994 08:49:37 GMT",  # day is 2DIGIT
        "sun, 06 nov 1994 08:49:37 gmt",  # names are case-sensitive
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",  # rfc850 takes the long day name
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun, \uff10\uff16 Nov 1994 08:49:37 GMT",  # fullwidth digits
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
    ],
)
def test_other_date_forms_are_none(text: str) -> None:
    """Only the three HTTP-date forms parse; email-style variants are not trusted."""
    assert parse_retry_after(text, now=NOW) is None


def test_an_extreme_now_never_raises() -> None:
    """Any finite now= is accepted; a date beyond the platform's calendar is just None."""
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now=1e300) is None
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=1e300) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=-1e300) > 0


def test_a_leap_second_is_accepted() -> None:
    """A second of 60 is a leap second (second = 2DIGIT, as in IMF)."""
    when = calendar.timegm((2016, 12, 31, 23, 59, 60))
    assert parse_retry_after("Sat, 31 Dec 2016 23:59:60 GMT", now=when - 1) == 1.0


# -- parse_retry_after: numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (-0.0, 0.0),
        (2.5, 2.5),
        (120, 120.0),
        (math.inf, math.inf),
        (10**400, math.inf),  # too large for a float: as long as infinity
        (datetime.timedelta(seconds=3), 3.0),
        (math.nan, None),
        (-1, None),
        (-math.inf, None),
        (datetime.timedelta(seconds=-1), None),
        (True, None),
        (False, None),
        (None, None),
        (object(), None),
        ([5], None),
    ],
)
def test_numbers(value: object, expected: float | None) -> None:
    """Finite non-negative numbers are seconds; inf is inf; NaN, negatives, bools are None."""
    result = parse_retry_after(value)
    if expected is None:
        assert result is None
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("now", "error"),
    [("now", TypeError), (True, TypeError), (math.nan, ValueError), (math.inf, ValueError)],
)
def test_now_is_validated(now: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="now="):
        parse_retry_after("5", now=now)  # type: ignore[arg-type]


# -- properties -----------------------------------------------------------------------------------

_ASCII_DIGITS = re.compile(r"[0-9]+")
_DATE_FORMATS = ("%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT", "%a %b %d %H:%M:%S %Y")


def _valid(text: str) -> bool:
    """An independent (more lenient) oracle: ASCII digits, or one of the three date forms."""
    stripped = text.strip(" \t")
    if _ASCII_DIGITS.fullmatch(stripped):
        return True
    if not stripped.isascii():
        return False
    for form in _DATE_FORMATS:
        try:
            time.strptime(stripped, form)
        except ValueError:
            continue
        return True
    return False


def _mutations() -> st.SearchStrategy[str]:
    dates = st.floats(0, 4e9).flatmap(
        lambda t: st.sampled_from([imf_fixdate(t), rfc850_date(t), asctime_date(t)])
    )

    def mutate(pair: tuple[str, int, str]) -> str:
        text, index, char = pair
        index %= len(text) + 1
        return text[:index] + char + text[index + 1 :]

    return st.tuples(dates, st.integers(0, 40), st.characters()).map(mutate)


@given(
    text=st.text()
    | st.text(alphabet=st.characters(categories=["Nd", "No", "Zs"]))
    | st.from_regex(r"[ \t]*[0-9]+[ \t]*", fullmatch=True)
    | _mutations(),
    now=st.just(NOW) | st.floats(allow_nan=False, allow_infinity=False),
)
def test_parse_never_raises_and_accepts_only_valid_values(text: str, now: float) -> None:
    """Any string, any now=: never an error; a result only for ASCII digits or an HTTP-date."""
    result = parse_retry_after(text, now=now)
    assert result is None or _valid(text)
    assert result is None or result >= 0
    assert parse_retry_after(text.encode("utf-8"), now=now) == result


@given(text=st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1))
def test_a_non_ascii_digit_never_counts(text: str) -> None:
    """Unicode digits (Arabic-Indic, fullwidth, superscripts...) are not delay-seconds."""
    if not text.isascii():
        assert parse_retry_after(text) is None
        assert parse_retry_after("1" + text) is None


@given(number=st.integers(0, 10**30))
def test_ascii_digits_round_trip(number: int) -> None:
    assert parse_retry_after(str(number)) == float(number)
    assert parse_retry_after(f" {number}\t".encode()) == float(number)


@given(seconds=st.integers(0, 10**6), start=st.integers(0, 4_000_000_000))
def test_dates_round_trip_in_every_form(seconds: int, start: int) -> None:
    """A date `seconds` after `now`, in any of the three forms, is `seconds` away."""
    now = float(start)
    when = now + seconds
    for form in (imf_fixdate, rfc850_date, asctime_date):
        if form is rfc850_date and seconds > 50 * 365 * 86400:
            continue
        assert parse_retry_after(form(when), now=now) == seconds


# -- retry_after_of: every source follows the same rule ------------------------------------------


def test_retry_after_of_attribute_follows_the_number_rule() -> None:
    class Throttled(Exception):
        def __init__(self, retry_after: object) -> None:
            self.retry_after = retry_after

    assert retry_after_of(Throttled(4.0)) == 4.0
    assert retry_after_of(Throttled(math.inf)) == math.inf
    assert retry_after_of(Throttled(10**400)) == math.inf
    assert retry_after_of(Throttled(datetime.timedelta(seconds=2))) == 2.0
    assert retry_after_of(Throttled("7")) == 7.0
    for ignored in (math.nan, -1, True, None, "²", object()):
        assert retry_after_of(Throttled(ignored)) is None


def test_retry_after_of_falls_back_to_the_header_when_the_attribute_is_unusable() -> None:
    class Response:
        headers = {"Retry-After": "9"}

    class Throttled(Exception):
        retry_after = math.nan
        response = Response()

    assert retry_after_of(Throttled()) == 9.0


def test_a_falsy_response_is_still_read() -> None:
    """A requests Response is falsy for a 4xx/5xx: its Retry-After must still count."""

    class Response:
        headers = {"Retry-After": "9"}

        def __bool__(self) -> bool:
            return False

    class HTTPError(Exception):
        response = Response()

    assert retry_after_of(HTTPError()) == 9.0


def test_a_lower_case_header_key_in_a_plain_dict_is_read() -> None:
    class Response:
        headers = {"retry-after": "9"}

    assert retry_after_of(Response()) == 9.0


# -- Retry honours the rule ----------------------------------------------------------------------


class Transient(Exception):
    def __init__(self, retry_after: object = None, header: str | None = None) -> None:
        super().__init__()
        self.retry_after = retry_after
        if header is not None:
            self.response = type("Response", (), {"headers": {"Retry-After": header}})()


def run(error: Exception, **config: object) -> tuple[int, FakeClock, Exception | None]:
    clock = FakeClock()
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return "ok"

    retry = Retry(on=Transient, clock=clock, wait=0.1, **config)  # type: ignore[arg-type]
    try:
        retry.call(flaky)
    except Transient as exc:
        return calls, clock, exc
    return calls, clock, None


@pytest.mark.parametrize(
    "error",
    [
        Transient(retry_after=math.inf),
        Transient(retry_after=10**400),
        Transient(retry_after=3600),
        Transient(header="9" * 400),
        Transient(header="3600"),
        Transient(header=asctime_date(time.time() + 3600)),
        Transient(header=rfc850_date(time.time() + 3600)),
    ],
)
def test_a_retry_after_above_the_maximum_gives_up_at_once(error: Transient) -> None:
    """Infinite and huge delays, from any source, give up without sleeping; the delay is noted."""
    calls, clock, raised = run(error, max_retry_after=60)
    assert calls == 1
    assert clock.sleeps == []
    assert raised is error
    (note,) = error.__notes__
    assert re.search(r"\(retry_after (inf|[0-9.]+s) > max_retry_after 60\.000s\)$", note), note


@pytest.mark.parametrize(
    "error",
    [
        Transient(retry_after=math.nan),
        Transient(retry_after=-5),
        Transient(retry_after=True),
        Transient(header="²"),
        Transient(header="٣٠"),
        Transient(header="-5"),
        Transient(header="1.5"),
    ],
)
def test_an_invalid_retry_after_is_ignored(error: Transient) -> None:
    """NaN, negative, bool and malformed values are ignored: the policy's own wait applies."""
    calls, clock, raised = run(error)
    assert (calls, raised) == (2, None)
    assert clock.sleeps == [0.1]


def test_a_valid_retry_after_is_the_minimum_wait() -> None:
    calls, clock, _ = run(Transient(header=" 5\t"))
    assert calls == 2
    assert clock.sleeps == [5.0]
    calls, clock, _ = run(Transient(retry_after=datetime.timedelta(seconds=3)))
    assert clock.sleeps == [3.0]
