"""Lock-free event counters for hot paths.

`itertools.count.__next__` runs in C without releasing the GIL, so concurrent
threads never lose an increment; the current value is read from its repr
(pickle support for itertools is gone in Python 3.14, the repr stays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import itertools

__all__ = ["peek"]


def peek(counter: itertools.count[int]) -> int:
    """The next number `counter` would give (= how many it gave), without taking it."""
    return int(repr(counter)[6:-1])
