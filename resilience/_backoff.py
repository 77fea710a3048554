"""How long to wait before a retry: jittered exponential backoff, and Retry-After."""

from __future__ import annotations

import calendar
import datetime
import math
import random
import re
import time
from typing import Literal

from ._validate import check_int, check_seconds

__all__ = ["Backoff", "parse_retry_after", "retry_after_of"]

Jitter = Literal["full", "equal", "none"]


class Backoff:
    """Exponential backoff with jitter, after AWS's "Exponential Backoff And Jitter".

    With `expo(n) = min(maximum, initial * multiplier ** (n - 1))` for the
    n-th failed attempt (Marc Brooker, AWS Architecture Blog, 2015):

    - `jitter="full"` (default): `sleep = uniform(0, expo(n))`; the least
      total work under contention in the blog's simulations;
    - `jitter="equal"`: `sleep = expo(n) / 2 + uniform(0, expo(n) / 2)`;
    - `jitter="none"`: `sleep = expo(n)`; synchronised retry waves, avoid.

    Args:
        initial: The first wait's ceiling, seconds or a `datetime.timedelta` (> 0, finite).
        maximum: The cap on every wait, seconds or a `datetime.timedelta` (>= initial, finite).
        multiplier: Growth per attempt (a finite number >= 1).
        jitter: "full", "equal" or "none".
        rng: A `random.Random` for reproducible waits (tests).
    """

    __slots__ = ("initial", "jitter", "maximum", "multiplier", "rng")

    def __init__(
        self,
        *,
        initial: float | datetime.timedelta = 0.1,
        maximum: float | datetime.timedelta = 10.0,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        self.initial = check_seconds(initial, "initial")
        self.maximum = check_seconds(maximum, "maximum")
        if self.maximum < self.initial:
            raise ValueError(f"maximum={maximum!r} must be >= initial={initial!r}")
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
            raise TypeError(f"multiplier= must be a number, got {multiplier!r}")
        if not (math.isfinite(multiplier) and multiplier >= 1):
            raise ValueError(f"multiplier= must be a finite number >= 1, got {multiplier!r}")
        self.multiplier = float(multiplier)
        if not isinstance(jitter, str):
            raise TypeError(f'jitter= must be "full", "equal" or "none", got {jitter!r}')
        if jitter not in ("full", "equal", "none"):
            raise ValueError(f'jitter= must be "full", "equal" or "none", got {jitter!r}')
        self.jitter = jitter
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng= must be a random.Random, got {rng!r}")
        self.rng = rng or random.Random()  # noqa: S311  (jitter, not cryptography)

    def ceiling(self, attempt: int) -> float:
        """`expo(attempt)`: the un-jittered wait after failed attempt number `attempt`."""
        return self._ceiling(check_int(attempt, "attempt"))

    def _ceiling(self, attempt: int) -> float:
        try:
            return min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        except OverflowError:
            return self.maximum

    def __call__(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (an int >= 1; 1 is the first call)."""
        expo = self._ceiling(check_int(attempt, "attempt"))
        if self.jitter == "full":
            return self.rng.uniform(0, expo)
        if self.jitter == "equal":
            return expo / 2 + self.rng.uniform(0, expo / 2)
        return expo

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial!r}, maximum={self.maximum!r}, "
            f"multiplier={self.multiplier!r}, jitter={self.jitter!r})"
        )


# RFC 9110 section 5.6.7: the three HTTP-date forms, case-sensitive, ASCII digits only.
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = f"({'|'.join(_MONTHS)})"
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
#: (pattern, groups in the order day, month, year, hour, minute, second)
_HTTP_DATES = (
    # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    (re.compile(f"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT"), (1, 2, 3, 4, 5, 6)),
    # rfc850-date (obsolete): Sunday, 06-Nov-94 08:49:37 GMT
    (
        re.compile(f"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT"),
        (1, 2, 3, 4, 5, 6),
    ),
    # asctime-date (obsolete): Sun Nov  6 08:49:37 1994
    (re.compile(f"{_DAY} {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})"), (2, 1, 6, 3, 4, 5)),
)


def parse_retry_after(value: object, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 section 10.2.3), or None.

    One rule, whatever the value's type:

    - a string (or bytes) is `delay-seconds`, ASCII digits only (`"120"`), or
      an HTTP-date in one of the three forms of RFC 9110 section 5.6.7
      (IMF-fixdate `"Sun, 06 Nov 1994 08:49:37 GMT"`, the obsolete RFC 850
      `"Sunday, 06-Nov-94 08:49:37 GMT"` and asctime `"Sun Nov  6 08:49:37 1994"`),
      compared with `now` (wall-clock seconds since the epoch; default
      `time.time()`); a date in the past gives 0.0. Spaces and tabs around
      the value are stripped (HTTP's optional whitespace around a field
      value); anything else (signs, decimals, exponents, inner or other
      whitespace, non-ASCII digits such as Arabic-Indic, fullwidth or
      superscript ones, other date forms, empty) gives None;
    - a number (or a `datetime.timedelta`) that is finite and >= 0 is seconds;
    - too many digits for a float, or an infinite number, gives `math.inf`:
      a wait longer than any `max_retry_after`, so a retry gives up at once;
    - NaN, a negative number, a bool, None or any other object gives None.

    A malformed value is ignored (None), never trusted and never an error.
    """
    if now is not None:
        now = _check_now(now)
    if isinstance(value, str):
        return _parse_text(value, now)
    if isinstance(value, (bytes, bytearray)):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        return _parse_text(text, now)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            return math.inf if value > 0 else None
    elif isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    else:
        return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return seconds + 0.0  # -0.0 becomes 0.0


def _parse_text(value: str, now: float | None) -> float | None:
    text = value.strip(" \t")
    if text.isascii() and text.isdigit():
        return float(text)  # never raises; more digits than a float holds give inf
    fields = _date_fields(text)
    if fields is None:
        return None
    day, month, year, hour, minute, second = fields
    wall = time.time() if now is None else now
    years = int(year)
    if len(year) == 2:
        try:
            current = time.gmtime(wall).tm_year
        except (OverflowError, OSError, ValueError):  # `now` beyond the platform's time_t
            return None
        years += current - current % 100
    try:
        datetime.date(years, _MONTHS.index(month) + 1, int(day))
    except ValueError:  # 31 Feb, year 0000
        return None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:  # 60: a leap second
        return None
    clock = (_MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second))
    when = calendar.timegm((years, *clock))
    if len(year) == 2 and when > wall + _FIFTY_YEARS:
        # RFC 9110 section 5.6.7: a two-digit year that appears to be more than
        # 50 years in the future is the most recent past year with those digits.
        when = calendar.timegm((years - 100, *clock))
    return max(when - wall, 0.0)


_FIFTY_YEARS = 50 * 365.2425 * 86400  # seconds, in mean Gregorian years


def _date_fields(text: str) -> tuple[str, ...] | None:
    """(day, month, year, hour, minute, second) of an HTTP-date in any form, or None."""
    for pattern, order in _HTTP_DATES:
        match = pattern.fullmatch(text)
        if match is not None:
            return tuple(match.group(i) for i in order)
    return None


def _check_now(now: object) -> float:
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"now= must be wall-clock seconds since the epoch, got {now!r}")
    if not math.isfinite(now):
        raise ValueError(f"now= must be a finite number of seconds, got {now!r}")
    return float(now)


def retry_after_of(outcome: object) -> float | None:
    """The server-requested wait carried by an exception or a result, if any.

    Looks, in order, at a `retry_after` attribute (e.g. `CircuitOpenError`),
    then at a `Retry-After` header on the outcome's `.response` (an
    `HTTPStatusError`, a `requests.HTTPError`) or, without one, on the
    outcome itself (an httpx `Response`). Every source follows the rule of
    `parse_retry_after`; the first usable value wins, so a malformed
    attribute does not hide a valid header.
    """
    try:
        seconds = parse_retry_after(getattr(outcome, "retry_after", None))
        if seconds is not None:
            return seconds
        response = getattr(outcome, "response", None)
        if response is None:  # not `or`: a requests Response is falsy for a 4xx or 5xx
            response = outcome
        getter = getattr(getattr(response, "headers", None), "get", None)
        if getter is None:
            return None
        header = getter("Retry-After")
        if header is None:  # a plain dict is case-sensitive
            header = getter("retry-after")
        return parse_retry_after(header)
    except Exception:  # noqa: BLE001  (a strange object must never break a retry)
        return None
