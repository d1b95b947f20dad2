"""Azure Monitor's exporters for the app's telemetry pipeline, and tracing of the Azure SDK's calls.

The exporters are those ``azure-monitor-opentelemetry``'s ``configure_azure_monitor`` would create; the app builds
them itself so that its own pipeline, with the redaction first, is the one that exports (see
``shared.core.telemetry_pipeline``). Each reads ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``
(``Authorization=AAD;ClientId=...``) itself and then sends with that managed identity, as the deployment requires
(local authentication is off on the Application Insights resource).
"""

from __future__ import annotations

import logging

from azure.monitor.opentelemetry.exporter import (
    AzureMonitorLogExporter,
    AzureMonitorMetricExporter,
    AzureMonitorTraceExporter,
)

from shared.core.telemetry_pipeline import Exporters

_log = logging.getLogger(__name__)


def azure_monitor_exporters(connection_string: str) -> Exporters:
    """Exporters to the Application Insights resource of ``connection_string``."""
    return Exporters(
        spans=AzureMonitorTraceExporter(connection_string=connection_string),
        logs=AzureMonitorLogExporter(connection_string=connection_string),
        metrics=AzureMonitorMetricExporter(connection_string=connection_string),
    )


def trace_azure_sdk_calls() -> None:
    """Let the Azure SDK clients (Table, Blob, Service Bus, Key Vault) record their calls as spans, as the distro
    does (``azure-core-tracing-opentelemetry``); the redaction treats them like any other span."""
    try:
        from azure.core.settings import settings
        from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan
    except ImportError:  # the plugin ships with azure-monitor-opentelemetry; without it the SDK simply records nothing
        _log.warning("Azure SDK tracing unavailable: azure-core-tracing-opentelemetry is not installed")
        return
    settings.tracing_implementation = OpenTelemetrySpan
