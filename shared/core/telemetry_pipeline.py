"""The telemetry pipeline the app owns: providers, the sampler, the redaction ahead of every exporter.

``build_pipeline(exporters, sampling_ratio=...)`` builds a tracer, a logger and a meter provider around the given
exporters (Azure Monitor's in Azure, in-memory ones in tests: the same function installs either), and
``install_pipeline`` makes them the process's providers and hangs the exporting log handler on the ``writeback``
logger. The app installs its own pipeline rather than letting the Python worker's Azure Monitor distro install one
(``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``), because only its own puts ``RedactingSpanProcessor`` before the
exporter and samples with ``change_sampler``; ``install_pipeline`` refuses to run second to another pipeline.

Sampling happens here, in the app's tracer provider: with ``telemetryMode: OpenTelemetry`` the host ignores
host.json's ``logging.applicationInsights`` section (sampling included), and the host samples its own spans
itself.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from shared.core.telemetry import LOGGER_NAME, SERVICE_NAME, ChangeIdLogFilter, RedactingSpanProcessor


class TelemetryConflictError(RuntimeError):
    """Another tracer or logger provider was installed before the app's (its redaction would not run)."""


@dataclass(frozen=True)
class Exporters:
    """Where telemetry goes; a signal without an exporter is still produced (spans, metrics) but kept local."""

    spans: SpanExporter | None = None
    logs: LogRecordExporter | None = None
    metrics: MetricExporter | None = None


@dataclass(frozen=True)
class TelemetryPipeline:
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider
    log_handler: logging.Handler

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.logger_provider.force_flush()
        self.meter_provider.force_flush()


def change_sampler(ratio: float) -> Sampler:
    """Parent-based sampling that keeps a change's trace whole, across processes too.

    A span whose parent was sampled out is sampled out; a root, and a span whose parent (from another process: the
    host, or a ``traceparent`` carried by a message or an orchestration input) was sampled in, is decided by
    ``TraceIdRatioBased(ratio)``, a function of the trace id alone. Every process of a change therefore decides the
    same for its trace: a sampled root keeps every child, a sampled-out one keeps them all out. Plain
    ``ParentBased(TraceIdRatioBased)`` would follow the host's span, which the host samples in, so the ratio would
    never apply in Azure.
    """
    by_trace_id = TraceIdRatioBased(ratio)
    return ParentBased(root=by_trace_id, remote_parent_sampled=by_trace_id)


def build_pipeline(
    exporters: Exporters, *, sampling_ratio: float = 1.0, service_name: str = SERVICE_NAME
) -> TelemetryPipeline:
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(sampler=change_sampler(sampling_ratio), resource=resource)
    # First: the provider runs its processors in order, so the exporting one below sees redacted spans only.
    tracer_provider.add_span_processor(RedactingSpanProcessor())
    if exporters.spans is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporters.spans))
    logger_provider = LoggerProvider(resource=resource)
    if exporters.logs is not None:
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(exporters.logs))
    readers: list[MetricReader] = []
    if exporters.metrics is not None:
        readers.append(PeriodicExportingMetricReader(exporters.metrics))
    meter_provider = MeterProvider(metric_readers=readers, resource=resource)
    handler = LoggingHandler(logger_provider=logger_provider)
    handler.addFilter(ChangeIdLogFilter())
    return TelemetryPipeline(tracer_provider, logger_provider, meter_provider, handler)


_installed: TelemetryPipeline | None = None
_lock = threading.Lock()


def installed_pipeline() -> TelemetryPipeline | None:
    return _installed


def install_pipeline(pipeline: TelemetryPipeline) -> TelemetryPipeline:
    """Make ``pipeline`` this process's, once; later calls return the one installed first.

    Raises ``TelemetryConflictError`` when another tracer or logger provider got there first (in Azure: the Python
    worker's Azure Monitor distro, configured by ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` without
    ``OTEL_TRACES_EXPORTER=none`` / ``OTEL_LOGS_EXPORTER=none``): its exporter would receive spans and logs that
    never went through the redaction, so the app refuses to start rather than export PHI.
    """
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        trace.set_tracer_provider(pipeline.tracer_provider)
        set_logger_provider(pipeline.logger_provider)
        if trace.get_tracer_provider() is not pipeline.tracer_provider:
            raise TelemetryConflictError(
                "another OpenTelemetry tracer provider was installed before the app's, so its spans would be "
                "exported without redaction; in Azure set OTEL_TRACES_EXPORTER=none and OTEL_LOGS_EXPORTER=none "
                "next to PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY (README: Deployment and telemetry)"
            )
        if get_logger_provider() is not pipeline.logger_provider:
            raise TelemetryConflictError(
                "another OpenTelemetry logger provider was installed before the app's; in Azure set "
                "OTEL_LOGS_EXPORTER=none next to PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
            )
        # Metrics carry targets and statuses only: a meter provider installed first keeps them, with no harm.
        metrics.set_meter_provider(pipeline.meter_provider)
        logging.getLogger(LOGGER_NAME).addHandler(pipeline.log_handler)
        _installed = pipeline
        return pipeline
