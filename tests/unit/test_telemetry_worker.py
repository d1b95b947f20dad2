"""Telemetry as deployed: the app's settings from infra/app/api.bicep, the Python worker's part emulated from its
source (``tests/worker_emulation.py``), the real HTTP function, and what the Azure Monitor exporters send to an
Application Insights ingestion endpoint (captured locally).

Each scenario runs in a fresh process, as a worker does: OpenTelemetry's providers can be installed once per process.
What stays unverified without Azure (the host's own spans and its filtering of relayed logs) is listed in the README.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.worker_emulation import REPO, EmulatedContext, EmulatedTraceContext, EmulatedWorker, IngestionCapture

pycep = pytest.importorskip("pycep")

HOST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN = "00f067aa0ba902b7"
ACTIVITY_HOST_TRACE = "0af7651916cd43dd8448eb211c80319c"
ACTIVITY_HOST_SPAN = "b7ad6b7169203331"


@functools.cache
def bicep_telemetry_settings() -> dict[str, str]:
    """The worker- and OpenTelemetry-related app settings the deployment sets (literal values only)."""
    doc = pycep.BicepParser().parse(text=(REPO / "infra" / "app" / "api.bicep").read_text(encoding="utf-8"))
    settings: dict[str, Any] = doc["variables"]["baseAppSettings"]["value"]
    return {k: v for k, v in settings.items() if k.startswith(("PYTHON_", "OTEL_")) and isinstance(v, str)}


def run_in_a_worker(settings: dict[str, str], tmp_path: Path, canary: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_", "PYTHON_"))}
    env.pop("WEBSITE_SITE_NAME", None)
    env.update(settings)
    env |= {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "TMPDIR": str(tmp_path), "CANARY": canary}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", "from tests.unit.test_telemetry_worker import scenario; scenario()"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def scenario() -> None:
    """In the child process: init the worker, index the app, run an intake and an activity step, print the capture."""
    canary = os.environ["CANARY"]
    capture = IngestionCapture()
    os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"] = capture.connection_string
    worker = EmulatedWorker()
    worker.init()
    try:
        worker.index()
    except Exception as exc:
        print(json.dumps({"index_error": f"{type(exc).__name__}: {exc}", "raw": [b.decode() for b in capture.raw]}))
        leave()

    import logging

    import azure.functions as func
    import httpx
    from opentelemetry import _logs, trace

    from shared import bootstrap
    from shared.api.caller_identity import encode_easyauth_principal
    from shared.core.telemetry import change_span
    from tests.fake_gateway import fake_gateway

    gateway = fake_gateway()
    bootstrap._gateway = gateway
    body = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": canary}],
        "reason": f"because {canary}",
    }
    request = func.HttpRequest(
        method="POST",
        url="https://gw.example/api/v1/changes",
        headers={
            "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("crm", ["Writeback.Submit"], user_id="u-1"),
            "Idempotency-Key": str(uuid.uuid4()),
            "Content-Type": "application/json",
            # the caller's own trace context: the host continued it; the app must take the host's span instead
            "traceparent": f"00-{HOST_TRACE}-1111111111111111-01",
        },
        body=json.dumps(body).encode(),
    )
    response = worker.invoke("submit_change", f"00-{HOST_TRACE}-{HOST_SPAN}-01", req=request)
    change_id = json.loads(response.get_body())["changeId"]
    [message] = gateway.publisher.sent

    def activity_step() -> None:
        # What a step may meet: a value in an attribute, a FHIR search URL, an error quoting a value, a log line.
        try:
            with change_span("writeback.prepare", change_id, traceparent=message.traceparent) as span:
                span.set_attribute("fhir.telecom.value", canary)
                span.set_attribute("url.full", f"https://ehr.example/fhir/Patient?phone={canary}")
                logging.getLogger("writeback.pipeline").info("change %s: planned", change_id)
                httpx.get(capture.connection_string.split("IngestionEndpoint=")[1].split(";")[0] + f"fhir?q={canary}")
                raise ValueError(f"telecom {canary} rejected")
        except ValueError:
            pass

    worker.run(
        activity_step,
        EmulatedContext("prepare_change", EmulatedTraceContext(f"00-{ACTIVITY_HOST_TRACE}-{ACTIVITY_HOST_SPAN}-01")),
    )
    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider()):
        getattr(provider, "force_flush", lambda timeout_millis: None)(timeout_millis=10_000)
    print(
        json.dumps(
            {
                "status": response.status_code,
                "change_id": change_id,
                "worker_open_telemetry": worker.capability_open_telemetry,
                "envelopes": capture.envelopes,
                "raw": [b.decode(errors="replace") for b in capture.raw],
            }
        )
    )
    leave()


def leave() -> None:
    """Exit now: what was to be exported is flushed and printed, and the providers' shutdown at exit would only
    export again (metrics) to a capture endpoint that is going away."""
    sys.stdout.flush()
    os._exit(0)


def spans_named(envelopes: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in envelopes if e["data"]["baseData"].get("name") == name]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    canary = f"CANARY-{uuid.uuid4().hex}"
    result = run_in_a_worker(bicep_telemetry_settings(), tmp_path_factory.mktemp("worker"), canary)
    result["canary"] = canary
    return result


def test_the_intake_span_is_the_host_request_spans_child(deployed: dict[str, Any]) -> None:
    assert deployed.get("index_error") is None and deployed["status"] == 202
    [intake] = spans_named(deployed["envelopes"], "writeback.intake")
    assert intake["tags"]["ai.operation.id"] == HOST_TRACE
    assert intake["tags"]["ai.operation.parentId"] == HOST_SPAN
    assert intake["data"]["baseData"]["properties"]["writeback.change_id"] == deployed["change_id"]


def test_an_activity_continues_the_changes_trace_and_links_the_host_span(deployed: dict[str, Any]) -> None:
    [intake] = spans_named(deployed["envelopes"], "writeback.intake")
    [prepare] = spans_named(deployed["envelopes"], "writeback.prepare")
    assert prepare["tags"]["ai.operation.id"] == HOST_TRACE  # the change's trace, begun under the HTTP request
    assert prepare["tags"]["ai.operation.parentId"] == intake["data"]["baseData"]["id"]
    links = json.loads(prepare["data"]["baseData"]["properties"]["_MS.links"])
    assert {"operation_Id": ACTIVITY_HOST_TRACE, "id": ACTIVITY_HOST_SPAN} in links


def test_nothing_sent_to_application_insights_carries_the_canary(deployed: dict[str, Any]) -> None:
    sent = "\n".join(deployed["raw"])
    assert "writeback.prepare" in sent and "writeback.intake" in sent  # the export happened
    assert deployed["canary"] not in sent


def test_a_child_loggers_record_is_sent_once_with_the_change_id(deployed: dict[str, Any]) -> None:
    logs = [e for e in deployed["envelopes"] if e["data"]["baseData"].get("message", "").endswith(": planned")]
    assert len(logs) == 1  # the app's handler only; the worker declares OpenTelemetry, so the host relays nothing
    assert deployed["worker_open_telemetry"] is True
    [log] = logs
    assert log["data"]["baseData"]["properties"]["change_id"] == deployed["change_id"]
    assert log["tags"]["ai.operation.id"] == HOST_TRACE


def test_a_pipeline_installed_before_the_apps_stops_the_app(tmp_path: Path) -> None:
    """Without OTEL_*_EXPORTER=none the worker's own distro pipeline (no redaction) would export: refuse to start."""
    settings = {"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}
    result = run_in_a_worker(settings, tmp_path, f"CANARY-{uuid.uuid4().hex}")
    assert result["index_error"].startswith("TelemetryConflictError")
    assert "OTEL_TRACES_EXPORTER=none" in result["index_error"]


def test_the_deployment_uses_the_worker_setting_that_does_not_fail_invocations() -> None:
    settings = bicep_telemetry_settings()
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert {settings.get(f"OTEL_{s}_EXPORTER") for s in ("TRACES", "LOGS", "METRICS")} == {"none"}
    # With PYTHON_ENABLE_OPENTELEMETRY alone the worker has no propagator and every invocation raises.
    assert (
        settings.get("PYTHON_ENABLE_OPENTELEMETRY", "false") != "true"
        or "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" in settings
    )
