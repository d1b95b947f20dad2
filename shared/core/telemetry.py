"""Telemetry: one trace per change, the change id on every span and log record, metrics, and no PHI.

- The pipeline that exports all this is built in ``shared.core.telemetry_pipeline`` and installed once per process by
  ``shared.bootstrap.configure_telemetry()`` (called by ``function_app.py``): ``RedactingSpanProcessor`` runs before
  the exporting processor, and the log handler that exports carries ``ChangeIdLogFilter``.
- ``host_trace(context.trace_context)`` makes the Functions host's span for this invocation (the W3C trace context
  the Python worker hands every function in ``func.Context.trace_context``) the current parent, as the worker does
  itself when its OpenTelemetry support is on. A span started without an explicit parent is then the host span's
  child: the HTTP intake (``inbound_traceparent`` takes the caller's ``traceparent`` header only where no host span
  exists, in local runs), and every FHIR or SDK call made under it.
- A change's trace crosses every hop by W3C ``traceparent``: the intake's span → the Service Bus message's
  application properties → the orchestration's input → each activity's input. ``change_span(traceparent=...)``
  continues that trace and links the host's span of the invocation it runs in (which belongs to the host's trace of
  that message or activity), so one change stays one trace.
- ``change_span`` puts the change id on its span and in a context variable that ``ChangeIdLogFilter`` copies to
  every log record the exporting handler sees, whatever the logger (``writeback.intake`` as much as ``writeback``).

Attributes are ids, paths, versions, statuses and codes, never resource values.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Link, SpanContext, Status
from opentelemetry.trace import Span as ApiSpan

SERVICE_NAME = "fhir-writeback-gateway"
LOGGER_NAME = "writeback"  # the gateway's loggers (writeback.intake, writeback.dispatcher, ...) sit under it
CHANGE_ID_ATTRIBUTE = "writeback.change_id"
CHANGE_ID_LOG_ATTRIBUTE = "change_id"
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
    """Runs before the exporting processor: drops attributes that are not allow-listed, query strings, and the
    status description (an exception's text, which can quote a value)."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        change_id = CHANGE_ID.get()
        if change_id is not None:
            span.set_attribute(CHANGE_ID_ATTRIBUTE, change_id)

    def on_end(self, span: ReadableSpan) -> None:
        # A finished span is read-only through the API; the processors after this one (the exporter's) see what
        # is replaced here, because the provider calls its processors in the order they were added.
        attributes = getattr(span, "_attributes", None)
        if attributes is not None:
            span._attributes = redact_attributes(attributes)
        for event in span.events:
            if event.attributes:
                event._attributes = redact_attributes(event.attributes)
        if span.status.description:
            span._status = Status(span.status.status_code)


class ChangeIdLogFilter(logging.Filter):
    """Adds ``change_id`` to the records a handler emits, for correlation in Application Insights.

    It sits on the exporting *handler*: a filter on a logger only sees records created on that very logger, never
    those of its children (``writeback.intake``) that propagate to its handlers. A ``change_id`` given by the caller
    (``extra=``) is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        change_id = CHANGE_ID.get()
        if change_id is not None and getattr(record, CHANGE_ID_LOG_ATTRIBUTE, None) is None:
            setattr(record, CHANGE_ID_LOG_ATTRIBUTE, change_id)
        return True


class HostTraceContext(Protocol):
    """What the Python worker passes a function as ``func.Context.trace_context`` (W3C Trace Context)."""

    @property
    def trace_parent(self) -> str: ...

    @property
    def trace_state(self) -> str: ...


def _span_context(ctx: otel_context.Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


@contextmanager
def host_trace(trace_context: HostTraceContext | None) -> Iterator[None]:
    """Within the block the host's span for this invocation is the current parent (nothing changes without one).

    The Python worker attaches the same context itself when its OpenTelemetry support is on
    (azure_functions_worker/dispatcher.py, ``configure_opentelemetry``); doing it here keeps the app's spans under
    the host's whatever the worker's settings.
    """
    if trace_context is None or not trace_context.trace_parent:
        yield
        return
    ctx = extract({"traceparent": trace_context.trace_parent, "tracestate": trace_context.trace_state or ""})
    if not _span_context(ctx).is_valid:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def inbound_traceparent(header_value: str | None) -> str | None:
    """The parent for the span of an inbound request: the current (host's) span when there is one — the host has
    already continued the caller's ``traceparent`` — else the caller's header (local runs have no host span)."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    return header_value


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def change_span(
    name: str, change_id: str | None, *, traceparent: str | None = None, **attributes: Any
) -> Iterator[ApiSpan]:
    """A span for one step of one change, continuing the change's trace when ``traceparent`` is given.

    Without one (or with one that does not parse) the span is the current span's child: the host's, under
    ``host_trace``. With one, the current span, if it is another trace's (the host's span of this invocation), is
    linked rather than made the parent.
    """
    parent = extract({"traceparent": traceparent}) if traceparent else None
    if parent is not None and not _span_context(parent).is_valid:
        parent = None
    links: list[Link] = []
    if parent is not None:
        here = trace.get_current_span().get_span_context()
        if here.is_valid and here.trace_id != _span_context(parent).trace_id:
            links.append(Link(here))
    token = CHANGE_ID.set(change_id)
    try:
        attrs = {k: v for k, v in attributes.items() if v is not None}
        if change_id is not None:
            attrs[CHANGE_ID_ATTRIBUTE] = change_id
        with tracer.start_as_current_span(name, context=parent, attributes=attrs, links=links) as span:
            yield span
    finally:
        CHANGE_ID.reset(token)
