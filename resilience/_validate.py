"""Argument checks shared by every constructor: clear errors naming the parameter.

A zero, a negative number or NaN given by mistake is an error at construction,
never a silent default.
"""

from __future__ import annotations

import datetime
import math

__all__ = ["check_bool", "check_int", "check_ratio", "check_seconds", "check_string"]


def check_seconds(
    value: object, param: str, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """Return `value` as float seconds; it must be a real number > 0 (or >= 0).

    A `datetime.timedelta` is taken as its total seconds (as stamina does).
    """
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{param}= must be a number of seconds or a datetime.timedelta, got {value!r}"
        )
    else:
        seconds = float(value)
    if math.isnan(seconds) or (math.isinf(seconds) and not allow_inf):
        raise ValueError(f"{param}= must be a finite number of seconds, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{param}= must be {bound} seconds, got {value!r}")
    return seconds


def check_ratio(value: object, param: str, *, allow_zero: bool = False) -> float:
    """Return `value` as a float ratio in (0, 1] (or [0, 1] with `allow_zero`)."""
    bounds = "[0, 1]" if allow_zero else "(0, 1]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{param}= must be a ratio in {bounds}, got {value!r}")
    ratio = float(value)
    if not (0 <= ratio <= 1) or (ratio == 0 and not allow_zero):
        raise ValueError(f"{param}= must be a ratio in {bounds} (0.5 means 50%), got {value!r}")
    return ratio


def check_bool(value: object, param: str) -> bool:
    """Return `value` if it is True or False (not 0, 1 or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{param}= must be True or False, got {value!r}")
    return value


def check_int(value: object, param: str, *, minimum: int = 1) -> int:
    """Return `value` if it is an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{param}= must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{param}= must be >= {minimum}, got {value!r}")
    return value


def check_string(value: object, param: str) -> str:
    """Return `value` if it is a non-empty string (a policy or metric name)."""
    if not isinstance(value, str):
        raise TypeError(f"{param}= must be a str, got {value!r}")
    if not value.strip():
        raise ValueError(f"{param}= must not be empty")
    return value


def check_attempt_within_total(
    attempt_timeout: float | None, total_timeout: float | None, given: object, total: object
) -> None:
    """Refuse an attempt timeout longer than the total (`given`, `total`: as written)."""
    if total_timeout is None or attempt_timeout is None:
        return
    if attempt_timeout > total_timeout:
        raise ValueError(
            f"attempt_timeout={given!r} exceeds total_timeout={total!r}: "
            f"an attempt could never use its full time"
        )


def check_incoming_budget(
    max_seconds: object, default: object, safety_margin: object
) -> tuple[float, float | None, float]:
    """A server's clamp on incoming deadlines: `max_seconds`, `default` <= it, a margin below it."""
    maximum = check_seconds(max_seconds, "max_seconds")
    fallback = None if default is None else check_seconds(default, "default")
    if fallback is not None and fallback > maximum:
        raise ValueError(f"default={default!r} exceeds max_seconds={max_seconds!r}")
    margin = check_seconds(safety_margin, "safety_margin", allow_zero=True)
    if margin >= maximum:
        raise ValueError(
            f"safety_margin={safety_margin!r} must be less than max_seconds={max_seconds!r}: "
            f"every caller's budget would be spent before the handler started"
        )
    return maximum, fallback, margin
