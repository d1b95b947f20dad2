"""Telemetry: one trace per change, the change id on every span and log record, metrics, and no PHI.

- ``configure_telemetry()`` (called once by ``function_app.py``): Azure Monitor when
  ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, plain OpenTelemetry otherwise; either way spans go through
  ``RedactingSpanProcessor`` first, which keeps only allow-listed attributes and strips URL query strings.
- A change's trace crosses every hop by W3C ``traceparent``: the HTTP request → the Service Bus message's
  application properties → the orchestration's input → each activity's input → the FHIR calls.
- ``change_span(...)`` opens a span for a step of one change and puts the change id in a context variable that
  ``ChangeIdLogFilter`` adds to every log record.
Attributes are ids, paths, versions, statuses and codes, never resource values.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import Span as ApiSpan

SERVICE_NAME = "fhir-writeback-gateway"
CHANGE_ID_ATTRIBUTE = "writeback.change_id"
CHANGE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("writeback_change_id", default=None)

# Attribute keys (or prefixes ending in '.') a span may carry; everything else is dropped before export.
ALLOWED_ATTRIBUTES = (
    "writeback.",
    "http.request.method",
    "http.method",
    "http.response.status_code",
    "http.status_code",
    "http.route",
    "server.address",
    "server.port",
    "url.scheme",
    "url.path",
    "url.full",
    "http.url",
    "messaging.",
    "error.type",
    "exception.type",
    "code.function",
    "faas.",
    "service.",
    "telemetry.",
    "otel.",
)

tracer = trace.get_tracer(SERVICE_NAME)
meter = metrics.get_meter(SERVICE_NAME)
changes_accepted = meter.create_counter("writeback.changes.accepted", description="changes taken in")
changes_ended = meter.create_counter("writeback.changes.ended", description="changes that ended, by status")
approvals_pending = meter.create_up_down_counter("writeback.approvals.pending", description="changes awaiting approval")
write_latency = meter.create_histogram("writeback.write.duration", unit="ms", description="the downstream write")
retries = meter.create_counter("writeback.retries", description="waits on a throttled or failing target")
conflicts = meter.create_counter("writeback.conflicts", description="412s at the write, merged or not")

_configured = False
_lock = threading.Lock()


def _allowed(key: str) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in ALLOWED_ATTRIBUTES)


def redact_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in attributes.items():
        if not _allowed(key):
            continue
        if key in ("url.full", "http.url") and isinstance(value, str):
            value = value.split("?", 1)[0]  # search parameters can hold identifiers
        kept[key] = value
    return kept


class RedactingSpanProcessor(SpanProcessor):
    """Runs before the exporting processor: drops attributes that are not allow-listed, and query strings."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        change_id = CHANGE_ID.get()
        if change_id is not None:
            span.set_attribute(CHANGE_ID_ATTRIBUTE, change_id)

    def on_end(self, span: ReadableSpan) -> None:
        attributes = getattr(span, "_attributes", None)
        if attributes is None:
            return
        redacted = redact_attributes(attributes)
        # A finished span's attributes are read-only through the API; replace the mapping before export.
        span._attributes = redacted
        for event in span.events:
            if event.attributes:
                event._attributes = redact_attributes(event.attributes)


class ChangeIdLogFilter(logging.Filter):
    """Adds ``change_id`` (and the trace id) to every log record, for correlation in Application Insights."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.change_id = CHANGE_ID.get()
        return True


def configure_telemetry() -> None:
    """Set up tracing and metrics once per process."""
    global _configured
    with _lock:
        if _configured:
            return
        _configured = True
        logging.getLogger().addFilter(ChangeIdLogFilter())
        if os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(span_processors=[RedactingSpanProcessor()], logger_name="writeback")
            return
        plain = TracerProvider()
        plain.add_span_processor(RedactingSpanProcessor())
        trace.set_tracer_provider(plain)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def change_span(
    name: str, change_id: str | None, *, traceparent: str | None = None, **attributes: Any
) -> Iterator[ApiSpan]:
    """A span for one step of one change, continuing the change's trace when ``traceparent`` is given."""
    parent = extract({"traceparent": traceparent}) if traceparent else None
    token = CHANGE_ID.set(change_id)
    try:
        attrs = {k: v for k, v in attributes.items() if v is not None}
        if change_id is not None:
            attrs[CHANGE_ID_ATTRIBUTE] = change_id
        with tracer.start_as_current_span(name, context=parent, attributes=attrs) as span:
            yield span
    finally:
        CHANGE_ID.reset(token)
