"""Type-checked, never executed: the transports' options as users' type checkers see them.

`make test` runs `mypy --strict` on this file. A line marked
`# type: ignore[...]` must stay an error; mypy's warn_unused_ignores (on
with --strict) fails the check if it stops being one: a misspelled or
mistyped option must be caught before the code runs.
"""

from __future__ import annotations

import ssl

import httpx

import resilience
from resilience import AsyncResilientTransport, ResilientTransport
from resilience.testing import FakeClock

# Every option, spelled out, with a value of its type.
sync_transport = ResilientTransport(
    None,
    total_timeout=5.0,
    attempt_timeout=None,
    retry=resilience.Retry(on=(httpx.TransportError,)),
    breaker=resilience.BreakerRegistry(),
    concurrency_limit=True,
    retry_methods={"GET", "PUT"},
    retry_statuses=range(500, 600),
    failure_status=lambda status: status >= 500,
    idempotency_key=True,
    buffer_bodies=True,
    max_drain_bytes=1024,
    send_deadline_header=False,
    half_open_max_wait=None,
    clock=FakeClock(),
    verify=ssl.create_default_context(),
    cert=("cert.pem", "key.pem"),
    trust_env=False,
    http1=True,
    http2=False,
    limits=httpx.Limits(max_connections=10),
    proxy="http://proxy.internal:3128",
    uds=None,
    local_address="0.0.0.0",
    retries=1,
    socket_options=[(1, 2, 3)],
)
async_transport = AsyncResilientTransport(
    httpx.AsyncHTTPTransport(),
    total_timeout=None,
    retry=False,
    breaker=resilience.CircuitBreaker("api"),
    half_open_max_wait=...,
    concurrency_limit=lambda origin: resilience.ConcurrencyLimit(name=origin),
    hedge=resilience.Hedge(max_hedged_attempts=2),
)
shared = ResilientTransport(concurrency_limit=resilience.ConcurrencyLimit(name="all"))

# A misspelled option is an error (mypy suggests the right name).
ResilientTransport(total_timout=2)  # type: ignore[call-arg]
AsyncResilientTransport(atempt_timeout=1)  # type: ignore[call-arg]
ResilientTransport(verfy=False)  # type: ignore[call-arg]
# So is a value of the wrong type.
ResilientTransport(total_timeout="2")  # type: ignore[arg-type]
ResilientTransport(retry=3)  # type: ignore[arg-type]
AsyncResilientTransport(breaker="on")  # type: ignore[arg-type]
ResilientTransport(concurrency_limit=20)  # type: ignore[arg-type]
ResilientTransport(concurrency_limit=resilience.AIMDLimit())  # type: ignore[arg-type]
ResilientTransport(limits=10)  # type: ignore[arg-type]
ResilientTransport(clock=object())  # type: ignore[arg-type]
AsyncResilientTransport(hedge=True)  # type: ignore[arg-type]
# The sync transport does not hedge (a blocking request cannot be cancelled).
ResilientTransport(hedge=resilience.Hedge())  # type: ignore[call-arg]
# Options are keyword-only: only the inner transport is positional.
ResilientTransport(None, 30.0)  # type: ignore[call-arg]
# Each transport wraps its own kind of inner transport.
ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]
