"""The Python worker's part in telemetry, emulated from its source, and an Application Insights ingestion endpoint.

No Functions host or Python worker runs here. ``EmulatedWorker`` does, in order, what
Azure/azure-functions-python-worker does for telemetry (``workers/azure_functions_worker/dispatcher.py``, the same
in ``runtimes/v2/azure_functions_runtime/handle_event.py`` and ``otel.py``):

- once connected, it sets the root logger to INFO;
- on the init request, before it imports the app: with ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``,
  ``configure_azure_monitor(connection_string=..., logger_name=PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME or "")`` and
  then the trace-context propagator; with ``PYTHON_ENABLE_OPENTELEMETRY=true`` only a flag, no propagator;
- indexing: it imports ``function_app`` and takes the functions of its ``FunctionApp``;
- per invocation: a ``Context`` whose ``trace_context`` holds the host span's ``traceparent``, and, when either
  setting is on, that context extracted by the propagator and attached in the thread that runs the function
  (``configure_opentelemetry``) — with only ``PYTHON_ENABLE_OPENTELEMETRY`` the propagator is ``None`` and this
  raises ``AttributeError``, as the worker's does (issue 1881).

``IngestionCapture`` answers ``POST /v2.1/track`` (and Live Metrics) as Application Insights does and keeps every
envelope, so a test sees exactly what the Azure Monitor exporters would have sent.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import inspect
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _is_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


class EmulatedTraceContext:
    def __init__(self, trace_parent: str, trace_state: str = "") -> None:
        self.trace_parent = trace_parent
        self.trace_state = trace_state
        self.attributes: dict[str, str] = {}


class EmulatedContext:
    """The ``func.Context`` the worker builds from the invocation request."""

    def __init__(self, function_name: str, trace_context: EmulatedTraceContext) -> None:
        self.function_name = function_name
        self.invocation_id = "00000000-0000-4000-8000-000000000001"
        self.function_directory = str(REPO)
        self.trace_context = trace_context
        self.retry_context = None
        self.thread_local_storage = threading.local()


class EmulatedWorker:
    def __init__(self) -> None:
        self.azure_monitor_available = False
        self.otel_libs_available = False
        self.propagator: Any = None
        self.context_api: Any = None
        self.functions: dict[str, Callable[..., Any]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-sync")

    def init(self) -> None:
        # The worker routes records to the host from the root logger at INFO (DEBUG with PYTHON_ENABLE_DEBUG_LOGGING).
        logging.getLogger().setLevel(logging.INFO)
        if _is_true("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"):
            try:
                from opentelemetry import context as context_api
                from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

                self.context_api = context_api
                self.propagator = TraceContextTextMapPropagator()
                from azure.monitor.opentelemetry import configure_azure_monitor

                os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_functions")
                configure_azure_monitor(
                    connection_string=os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"),
                    logger_name=os.environ.get("PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME", ""),
                )
                self.azure_monitor_available = True
            except Exception:  # the worker logs and carries on without Azure Monitor
                self.azure_monitor_available = False
        if _is_true("PYTHON_ENABLE_OPENTELEMETRY"):
            self.otel_libs_available = True

    @property
    def capability_open_telemetry(self) -> bool:
        """``WorkerOpenTelemetryEnabled``: the host then stops exporting the logs the worker relays to it."""
        return self.azure_monitor_available or self.otel_libs_available

    def index(self) -> None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        module = importlib.import_module("function_app")
        app = module.app
        self.functions = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}

    def invoke(self, name: str, trace_parent: str, **kwargs: Any) -> Any:
        """Run a function as the worker does, after attaching the host's context: a sync one in its thread pool, an
        async one on its event loop (the dispatcher awaits it in the invocation's task)."""
        fn = self.functions[name]
        context = EmulatedContext(name, EmulatedTraceContext(trace_parent))
        if "context" in inspect.signature(fn).parameters:
            kwargs["context"] = context
        if inspect.iscoroutinefunction(fn):

            async def in_event_loop() -> Any:
                self._attach(context)
                return await fn(**kwargs)

            return asyncio.run(in_event_loop())
        return self.run(lambda: fn(**kwargs), context)

    def _attach(self, context: EmulatedContext) -> None:
        if self.capability_open_telemetry:
            carrier = {
                "traceparent": context.trace_context.trace_parent,
                "tracestate": context.trace_context.trace_state,
            }
            ctx = self.propagator.extract(carrier)  # None.extract with PYTHON_ENABLE_OPENTELEMETRY alone
            self.context_api.attach(ctx)

    def run(self, body: Callable[[], Any], context: EmulatedContext) -> Any:
        def in_worker_thread() -> Any:
            self._attach(context)
            return body()

        return self._pool.submit(in_worker_thread).result()


class IngestionCapture:
    """``POST {IngestionEndpoint}/v2.1/track`` and Live Metrics' posts, answered as accepted and kept."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                capture.raw.append(body)
                items: list[dict[str, Any]] = []
                if self.path.rstrip("/").endswith("/v2.1/track"):
                    items = json.loads(body)
                    capture.envelopes.extend(items)
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def connection_string(self) -> str:
        url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        return f"InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint={url};LiveEndpoint={url}"
