"""Argument checks shared by every constructor: clear errors naming the parameter.

A zero, a negative number or NaN given by mistake is an error at construction,
never a silent default.
"""

from __future__ import annotations

import math

__all__ = ["check_int", "check_seconds", "check_string"]


def check_seconds(
    value: object, param: str, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """Return `value` as float seconds; it must be a real number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{param}= must be a number of seconds, got {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or (math.isinf(seconds) and not allow_inf):
        raise ValueError(f"{param}= must be a finite number of seconds, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{param}= must be {bound} seconds, got {value!r}")
    return seconds


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
