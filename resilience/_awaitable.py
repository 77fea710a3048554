"""Is a returned value awaitable? Asked on every sync call, so it must be cheap.

A sync entry point (`breaker.call`, a sync decorator, `Retry.call`...) that
gets a coroutine or a future back cannot see how it ends; that is misuse, and
`resilience._compose.returned_awaitable` builds its error. The test is one
set lookup for the types already seen: `hasattr(type(r), "__await__")` on a
type without the attribute costs ~10x more (a failed lookup raises inside).
"""

from __future__ import annotations

__all__ = ["PLAIN_TYPES", "is_awaitable_type"]

#: Types known not to be awaitable. Bounded: classes made at run time would
#: otherwise be kept alive here one by one.
PLAIN_TYPES: set[type] = {type(None), bool, int, float, str, bytes, tuple, list, dict}
_MAX_PLAIN = 2048


def is_awaitable_type(kind: type) -> bool:
    """Whether instances of `kind` are awaitable; remembers the types that are not.

    Call sites test `type(result) not in PLAIN_TYPES` first.
    """
    if hasattr(kind, "__await__"):
        return True
    if len(PLAIN_TYPES) < _MAX_PLAIN:
        PLAIN_TYPES.add(kind)
    return False
