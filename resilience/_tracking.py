"""Every live policy, by kind, so that metrics can find them without being told.

Policies add themselves here when they are created (a weak reference: a policy
that is no longer used disappears from metrics too). Nothing is done per call.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["live", "track", "untrack"]

_lock = threading.Lock()
_live: dict[str, weakref.WeakSet[Any]] = {}


def track(kind: str, policy: object) -> None:
    """Remember `policy` (weakly) under `kind`: "breaker", "retry", "budget"..."""
    with _lock:
        _live.setdefault(kind, weakref.WeakSet()).add(policy)


def untrack(kind: str, policy: object) -> None:
    """Forget `policy`: it stays out of the metrics (an internal template, say)."""
    with _lock:
        policies = _live.get(kind)
        if policies is not None:
            policies.discard(policy)


def live(kind: str) -> list[Any]:
    """The live policies of `kind`, in no particular order."""
    with _lock:
        return list(_live.get(kind, ()))
