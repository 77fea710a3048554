"""Starlette and FastAPI exception handlers: 504 and 503 instead of a 500, in one call.

```python
import resilience.starlette

app = FastAPI()  # or Starlette()
app.add_middleware(resilience.middleware.ASGIDeadlineMiddleware)  # deadlines from callers
resilience.starlette.install_exception_handlers(app)
```

`ASGIDeadlineMiddleware` added with `app.add_middleware` already answers for
these exceptions: Starlette places user middleware inside its
`ServerErrorMiddleware`, so a route's exception reaches it before any 500.
The handlers are for the other cases: an app that does not run the
middleware, a middleware wrapped around the whole app (outside
`ServerErrorMiddleware`, which sends its 500 first), or an inner middleware
of yours that turns exceptions into responses. They give the same answers
as the middleware (`resilience.middleware.ErrorAnswers`), from Starlette's
`ExceptionMiddleware`, innermost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from ._deadline import current_deadline
from ._tracking import track
from .errors import BulkheadFullError, CircuitOpenError, DeadlineExceededError
from .middleware import ErrorAnswers

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["HANDLED", "install_exception_handlers"]

#: The exception classes the handlers are installed for.
HANDLED: tuple[type[Exception], ...] = (
    DeadlineExceededError,
    CircuitOpenError,
    BulkheadFullError,
    httpx.TimeoutException,
    ExceptionGroup,
)


def install_exception_handlers(
    app: Any,
    *,
    deadline_status: int = 504,
    shed_status: int = 503,
    retry_after: float = 1.0,
    name: str = "starlette",
) -> ErrorAnswers:
    """Answer 504 for a deadline that ran out and 503 for a refused call, from `app`'s routes.

    Installs one handler, with `app.add_exception_handler`, for each class of
    `HANDLED` (replacing a handler the app had for exactly that class; one
    for a subclass, such as `httpx.ReadTimeout`, is more specific and still
    wins). The answers are those of `resilience.middleware.ErrorAnswers`:

    - `DeadlineExceededError`: `deadline_status`;
    - an `httpx.TimeoutException` while the request's deadline (the one
      `ASGIDeadlineMiddleware` opened) has run out: `deadline_status`; any
      other httpx timeout, and every one in an app without the middleware,
      is re-raised from the handler, unchanged (a 500, as without handlers);
    - `CircuitOpenError`, `BulkheadFullError`: `shed_status`, with
      `Retry-After`;
    - an `ExceptionGroup` (a route that fanned out with a task group) whose
      errors are all answered above: `deadline_status` if any is a
      deadline's, else `shed_status`; any other group is re-raised.

    Args:
        app: A `starlette.applications.Starlette` or `fastapi.FastAPI`.
        deadline_status: The status for a deadline that ran out (504).
        shed_status: The status for a call a breaker or bulkhead refused (503).
        retry_after: `Retry-After` seconds when the error does not know (1).
        name: Names these handlers in metrics and events.

    Returns:
        The `ErrorAnswers` that counts the answers (`.metrics()`); the
        Prometheus collector finds it by itself.
    """
    add = getattr(app, "add_exception_handler", None)
    if not callable(add):
        raise TypeError(
            f"app must be a Starlette or FastAPI application (with add_exception_handler), "
            f"got {app!r}"
        )
    answers = ErrorAnswers(
        name=name, deadline_status=deadline_status, shed_status=shed_status, retry_after=retry_after
    )

    async def handler(request: Request, exc: Exception) -> Response:
        from starlette.responses import Response

        deadline = current_deadline()
        answer = answers.answer(exc, deadline)
        if answer is None:
            raise exc  # an httpx timeout that the deadline did not cause: not ours
        answers.record(answer, exc, deadline)
        return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))

    for cls in HANDLED:
        add(cls, handler)
    track("middleware", answers)
    return answers
