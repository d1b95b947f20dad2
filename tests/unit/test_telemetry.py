"""The app's telemetry pipeline: redaction ahead of the exporter, spans under the host's, the change id on every log
record, and parent-based sampling that keeps a change's trace whole across processes.

Pipelines built here are not installed (``build_pipeline`` only): each test has its own providers and exporters.
The tests of ``change_span`` and ``host_trace`` use the process's installed pipeline (``configure_telemetry``, as
``function_app.py`` calls it) with in-memory exporters added after its redaction, like any exporter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from shared.api.caller_identity import encode_easyauth_principal
from shared.bootstrap import configure_telemetry
from shared.config import TelemetrySettings
from shared.core.telemetry import CHANGE_ID_ATTRIBUTE, change_span, host_trace
from shared.core.telemetry_pipeline import Exporters, TelemetryPipeline, build_pipeline
from tests.fake_gateway import fake_gateway

REPO = Path(__file__).resolve().parents[2]
CANARY = "CANARY-5b0e0c1c-555-0199"
HOST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN = "00f067aa0ba902b7"
# TraceIdRatioBased compares the trace id's low 64 bits with ratio * 2**64: the first passes any ratio above 0, the
# second none below 1.
KEPT_TRACE = "f" * 16 + "0" * 15 + "1"
DROPPED_TRACE = "0" * 16 + "f" * 16


class HostContext:
    """``func.Context.trace_context`` as the Python worker fills it from the host's invocation request."""

    def __init__(self, trace_id: str = HOST_TRACE, span_id: str = HOST_SPAN, flags: str = "01") -> None:
        self.trace_parent = f"00-{trace_id}-{span_id}-{flags}"
        self.trace_state = ""


def exported(pipeline: TelemetryPipeline, memory: InMemorySpanExporter) -> list[ReadableSpan]:
    pipeline.flush()
    return list(memory.get_finished_spans())


def everything(spans: list[ReadableSpan]) -> str:
    return "\n".join(s.to_json() for s in spans)


def traceparent_of(span: trace.Span) -> str:
    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(span))
    return carrier["traceparent"]


# --- the exporting pipeline -------------------------------------------------------------------------------------


def test_the_exporter_receives_spans_only_after_the_redaction() -> None:
    memory = InMemorySpanExporter()
    pipeline = build_pipeline(Exporters(spans=memory))
    tracer = pipeline.tracer_provider.get_tracer("test")

    def a_failing_call() -> None:
        with tracer.start_as_current_span("FHIR GET Patient") as span:
            span.set_attribute("fhir.telecom.value", CANARY)
            span.set_attribute("url.full", f"https://ehr.example/fhir/Patient?phone={CANARY}")
            span.set_attribute("http.request.method", "GET")
            raise ValueError(f"telecom {CANARY} rejected")

    with pytest.raises(ValueError, match="rejected"):
        a_failing_call()
    [span] = exported(pipeline, memory)
    assert CANARY not in everything([span])
    assert span.attributes == {"url.full": "https://ehr.example/fhir/Patient", "http.request.method": "GET"}
    assert [dict(e.attributes or {}) for e in span.events] == [{"exception.type": "ValueError"}]


# --- spans under the host's ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed() -> tuple[InMemorySpanExporter, InMemoryLogRecordExporter]:
    pipeline = configure_telemetry(Exporters())  # no Azure Monitor, whatever the environment says
    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    pipeline.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    return spans, logs


@pytest.fixture
def memory(installed: tuple[InMemorySpanExporter, InMemoryLogRecordExporter]) -> InMemorySpanExporter:
    installed[0].clear()
    installed[1].clear()
    return installed[0]


def submit(headers: dict[str, str]) -> str:
    body = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": CANARY}],
        "reason": f"because {CANARY}",
    }
    principal = encode_easyauth_principal("crm", ["Writeback.Submit"], user_id="u-1")
    answer = fake_gateway().changes_api.submit(
        {"X-MS-CLIENT-PRINCIPAL": principal, "Idempotency-Key": "k1", "Content-Type": "application/json", **headers},
        json.dumps(body).encode(),
        "http://gw",
    )
    assert answer.status == 202, answer.body
    return str(answer.body["changeId"])


def test_under_the_workers_context_the_intake_is_the_host_spans_child_and_carries_no_phi(
    memory: InMemorySpanExporter,
) -> None:
    # The caller's traceparent arrives too: the host continued it, so the app must take the host's span instead.
    with host_trace(HostContext()):
        change_id = submit({"traceparent": f"00-{HOST_TRACE}-1111111111111111-01"})
    [intake] = [s for s in memory.get_finished_spans() if s.name == "writeback.intake"]
    assert intake.context.trace_id == int(HOST_TRACE, 16)
    assert intake.parent is not None and intake.parent.span_id == int(HOST_SPAN, 16) and intake.parent.is_remote
    assert (intake.attributes or {})[CHANGE_ID_ATTRIBUTE] == change_id
    assert CANARY not in everything(list(memory.get_finished_spans()))


def test_without_a_host_span_the_intake_continues_the_callers_traceparent(memory: InMemorySpanExporter) -> None:
    submit({"traceparent": f"00-{HOST_TRACE}-1111111111111111-01"})
    [intake] = [s for s in memory.get_finished_spans() if s.name == "writeback.intake"]
    assert intake.parent is not None and intake.parent.span_id == 0x1111111111111111


def test_a_step_continues_the_changes_trace_and_links_the_host_span_of_its_invocation(
    memory: InMemorySpanExporter,
) -> None:
    change_trace = f"00-{KEPT_TRACE}-2222222222222222-01"
    with host_trace(HostContext()), change_span("writeback.prepare", "c1", traceparent=change_trace):
        pass
    [step] = memory.get_finished_spans()
    assert step.context.trace_id == int(KEPT_TRACE, 16) and step.parent is not None
    assert step.parent.span_id == 0x2222222222222222
    assert [(link.context.trace_id, link.context.span_id) for link in step.links] == [
        (int(HOST_TRACE, 16), int(HOST_SPAN, 16))
    ]


def test_an_unreadable_traceparent_leaves_the_span_under_the_host(memory: InMemorySpanExporter) -> None:
    with host_trace(HostContext()), change_span("writeback.write", "c1", traceparent="not-a-traceparent"):
        pass
    [step] = memory.get_finished_spans()
    assert step.parent is not None and step.parent.span_id == int(HOST_SPAN, 16) and not step.links


def test_a_child_loggers_record_carries_the_change_id(
    installed: tuple[InMemorySpanExporter, InMemoryLogRecordExporter], memory: InMemorySpanExporter
) -> None:
    with change_span("writeback.intake", "c-42"):
        logging.getLogger("writeback.intake").warning("change %s: resumed", "c-42")
    logging.getLogger("writeback.intake").warning("outside any change")
    records = {r.log_record.body: dict(r.log_record.attributes or {}) for r in installed[1].get_finished_logs()}
    assert records["change c-42: resumed"]["change_id"] == "c-42"
    assert "change_id" not in records["outside any change"]


# --- sampling -----------------------------------------------------------------------------------------------------


def in_another_process(traceparent: str, *, ratio: float) -> ReadableSpan | None:
    """A span continuing ``traceparent`` in a process of its own (an activity after the orchestration's input)."""
    memory = InMemorySpanExporter()
    pipeline = build_pipeline(Exporters(spans=memory), sampling_ratio=ratio)
    with pipeline.tracer_provider.get_tracer("t").start_as_current_span(
        "step", context=extract({"traceparent": traceparent})
    ):
        pass
    spans = exported(pipeline, memory)
    return spans[0] if spans else None


def test_a_sampled_out_root_keeps_its_children_out_even_where_the_ratio_is_one() -> None:
    memory = InMemorySpanExporter()
    pipeline = build_pipeline(Exporters(spans=memory), sampling_ratio=0.0)
    tracer = pipeline.tracer_provider.get_tracer("t")
    with tracer.start_as_current_span("writeback.intake") as root:
        with tracer.start_as_current_span("FHIR GET Patient"):
            pass
        carried = traceparent_of(root)
    assert exported(pipeline, memory) == [] and int(carried[-2:], 16) & 1 == 0  # the sampled flag is off
    assert in_another_process(carried, ratio=1.0) is None


def test_a_sampled_root_keeps_every_child_across_processes() -> None:
    memory = InMemorySpanExporter()
    pipeline = build_pipeline(Exporters(spans=memory), sampling_ratio=0.5)
    tracer = pipeline.tracer_provider.get_tracer("t")
    host = extract({"traceparent": f"00-{KEPT_TRACE}-{HOST_SPAN}-01"})
    with tracer.start_as_current_span("writeback.intake", context=host) as intake:
        with tracer.start_as_current_span("FHIR GET Patient"):
            pass
        carried = traceparent_of(intake)
    assert {s.name for s in exported(pipeline, memory)} == {"writeback.intake", "FHIR GET Patient"}
    step = in_another_process(carried, ratio=0.5)
    assert step is not None and step.context.trace_id == int(KEPT_TRACE, 16)


def test_the_ratio_applies_under_the_hosts_span_which_the_host_always_samples() -> None:
    host = f"00-{DROPPED_TRACE}-{HOST_SPAN}-01"
    assert in_another_process(host, ratio=0.5) is None
    assert in_another_process(host, ratio=1.0) is not None


def test_the_sampling_ratio_is_a_typed_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRITEBACK_TRACE_SAMPLING_RATIO", raising=False)
    assert TelemetrySettings().trace_sampling_ratio == 1.0
    monkeypatch.setenv("WRITEBACK_TRACE_SAMPLING_RATIO", "0.25")
    assert TelemetrySettings().trace_sampling_ratio == 0.25
    monkeypatch.setenv("WRITEBACK_TRACE_SAMPLING_RATIO", "1.5")
    with pytest.raises(ValidationError, match="trace_sampling_ratio"):
        TelemetrySettings()


def test_host_json_has_no_application_insights_settings_that_opentelemetry_mode_ignores() -> None:
    host = json.loads((REPO / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert "applicationInsights" not in host["logging"]
