"""The pipeline steps in-process, in the orchestration's order (intake, dispatch, prepare, write): CPU per step,
CPU inside the ports, Table round trips and downstream calls per change; over the fakes, or over the real Table
adapters against Azurite (the difference is the storage client's CPU); optionally a sampled split by kind of work."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

from shared.app.dispatch import parse_message
from shared.fakes.fhir import FakeFhirClient
from tools.bench.cpu_sampling import StackSampler
from tools.bench.fixtures import build_in_process_services, change_body, in_process_principal, patient
from tools.bench.report import pct


def in_process(
    changes: int, warmup: int, *, tables: Any = None, sample: bool = False, prefix: str = "benchcpu"
) -> dict[str, Any]:
    """The pipeline steps in the orchestration's order, in-process: CPU per stage, port-level counts.

    Over the fakes by default; over real Table adapters when ``tables`` (a TableServiceClient) is given, so the
    difference is the storage client's CPU. ``sample`` adds a sampled split by kind of work.
    """
    services = build_in_process_services(tables, prefix=prefix)
    intake, pipeline = services.intake, services.pipeline
    calls, stores, others = services.table_calls, services.store_seconds, services.other_seconds
    principal = in_process_principal()
    # An allowed change is planned and written by one step (prepare goes on to write).
    stages: dict[str, list[float]] = {"intake": [], "dispatch": [], "prepare and write": []}
    totals: list[float] = []
    in_stores: list[float] = []
    in_others: list[float] = []
    table: list[int] = []
    downstream: list[int] = []
    sampler = StackSampler(threading.get_ident()) if sample else None
    run = uuid.uuid4().hex[:6]
    with sampler or ExitStack():
        for i in range(warmup + changes):
            pid = f"cpu-{run}-{i}"
            # a fresh fake FHIR server per change: the fake snapshots its whole store for a transaction (atomicity),
            # which would otherwise grow with the number of changes and be counted as the project's CPU
            fake = services.fhir = FakeFhirClient()
            fake.update(patient(pid))
            body = change_body(pid, f"555-{i % 10000:04d}")
            calls.clear()
            fake_calls = len(fake.calls)
            stores[0] = others[0] = 0.0
            t0 = time.process_time()
            change_id = intake.submit(principal, f"key-{run}-{i}", body).change.change_id
            t1 = time.process_time()
            message = parse_message(json.dumps({"changeId": change_id, "target": "local-ehr"}).encode())
            t2 = time.process_time()
            assert message.change_id == change_id
            result = pipeline.prepare_and_write(change_id)
            t4 = time.process_time()
            assert result["status"] == "completed", result
            if i >= warmup:
                for name, dt in zip(stages, (t1 - t0, t2 - t1, t4 - t2), strict=True):
                    stages[name].append(dt * 1000)
                totals.append((t4 - t0) * 1000)
                in_stores.append(stores[0] * 1000)
                in_others.append(others[0] * 1000)
                table.append(sum(calls.values()))
                downstream.append(len(fake.calls) - fake_calls)
    out: dict[str, Any] = {
        "stagesMedianMs": {k: statistics.median(v) for k, v in stages.items()},
        "totalMedianMs": statistics.median(totals),
        "totalP95Ms": pct(totals, 0.95),
        # inside the storage ports (the fakes, or the real Table adapters and client) and the other fakes
        "storesMedianMs": statistics.median(in_stores),
        "otherFakesMedianMs": statistics.median(in_others),
        "outsidePortsMedianMs": statistics.median(
            t - a - b for t, a, b in zip(totals, in_stores, in_others, strict=True)
        ),
        "tableRoundTrips": statistics.mean(table),
        "tableBreakdown": dict(calls),
        "fakeDownstreamCalls": statistics.mean(downstream),
        "activities": 2,
    }
    if sampler is not None:
        samples = sum(sampler.counts.values()) or 1
        out["split"] = {
            name: {"share": n / samples, "ms": n / samples * out["totalMedianMs"]}
            for name, n in sampler.counts.most_common()
        }
        out["splitSamples"] = samples
    return out
