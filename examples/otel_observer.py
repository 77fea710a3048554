"""Add OpenTelemetry (or anything else) through the event hooks.

An observer is any callable taking one event. This one records each policy
event as a span event on the current span, so a trace shows that a call was
retried, rejected by an open breaker, or cut by a deadline.
Needs the `otel` extra (opentelemetry-api); the SDK here only prints the result.
Run: python examples/otel_observer.py
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import resilience
from resilience.events import Event


def record_on_current_span(event: Event) -> None:
    """Attach a policy event to whatever span is active (no-op without one)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = {
        f"resilience.{field}": str(getattr(event, field))
        for field in type(event)._fields
        if field != "time" and getattr(event, field) is not None
    }
    span.add_event(f"resilience.{event.kind}", attributes=attributes)


def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("example")
    unsubscribe = resilience.events.subscribe(record_on_current_span)

    retry = resilience.Retry(on=ConnectionError, attempts=3, wait=0, name="inventory")
    attempts = 0

    @retry
    def stock() -> int:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("inventory unreachable")
        return 7

    try:
        with tracer.start_as_current_span("checkout"):
            print("stock:", stock())
    finally:
        unsubscribe()
    (span,) = exporter.get_finished_spans()
    for span_event in span.events:
        attributes = dict(span_event.attributes or {})
        print(span_event.name, attributes["resilience.name"], attributes["resilience.attempt"])


if __name__ == "__main__":
    main()
