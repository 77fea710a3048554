"""How long to wait before a retry: jittered exponential backoff, and Retry-After."""

from __future__ import annotations

import math
import random
import time
from typing import Literal

from ._validate import check_seconds

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
        initial: The first wait's ceiling, seconds (> 0).
        maximum: The cap on every wait, seconds (>= initial).
        multiplier: Growth per attempt (>= 1).
        jitter: "full", "equal" or "none".
        rng: A `random.Random` for reproducible waits (tests).
    """

    __slots__ = ("initial", "jitter", "maximum", "multiplier", "rng")

    def __init__(
        self,
        *,
        initial: float = 0.1,
        maximum: float = 10.0,
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
        if jitter not in ("full", "equal", "none"):
            raise ValueError(f'jitter= must be "full", "equal" or "none", got {jitter!r}')
        self.jitter = jitter
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng= must be a random.Random, got {rng!r}")
        self.rng = rng or random.Random()  # noqa: S311  (jitter, not cryptography)

    def ceiling(self, attempt: int) -> float:
        """`expo(attempt)`: the un-jittered wait after failed attempt number `attempt`."""
        try:
            return min(self.maximum, self.initial * self.multiplier ** max(attempt - 1, 0))
        except OverflowError:
            return self.maximum

    def __call__(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1 is the first call)."""
        expo = self.ceiling(attempt)
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


def parse_retry_after(value: object, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 section 10.2.3), or None.

    Accepts delay-seconds (`"120"`, or a number) and an HTTP-date (compared
    with `now`, wall-clock seconds since the epoch; default `time.time()`).
    A date in the past gives 0.0. Anything else (negative, NaN, garbage) gives
    None: a malformed header is ignored, never trusted.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    wall = time.time() if now is None else now
    return max(when.timestamp() - wall, 0.0)


def retry_after_of(outcome: object) -> float | None:
    """The server-requested wait carried by an exception or a result, if any.

    Looks, in order, at a `retry_after` attribute in seconds (e.g.
    `CircuitOpenError`), then at a `Retry-After` header on the outcome or on
    its `.response` (an httpx `Response`, or an `HTTPStatusError`).
    """
    try:
        attribute = getattr(outcome, "retry_after", None)
        if isinstance(attribute, (int, float)) and not isinstance(attribute, bool):
            return parse_retry_after(attribute)
        response = getattr(outcome, "response", None) or outcome
        getter = getattr(getattr(response, "headers", None), "get", None)
        return None if getter is None else parse_retry_after(getter("Retry-After"))
    except Exception:  # noqa: BLE001  (a strange object must never break a retry)
        return None
