"""Figures a client measures: the final answer of a governed change with ``Prefer: wait``, against direct writes to
the same FHIR server, and the Table round trips a change costs across processes.

- Throughput: ``callers`` threads each submit governed changes with ``Prefer: wait=30`` and take the answer as the
  outcome (a ``202`` left running is followed on ``Location``, honouring ``Retry-After``); the same callers then PUT
  the same number of updates straight to the FHIR server. Both rates are final answers per second.
- Latency: one caller on an idle gateway, one change at a time: submit → final answer, against one direct ``PUT``.
- Round trips: a gateway on two instances (HTTP on one, the pipeline on the other) whose Table endpoint is behind a
  recording proxy; a change's round trips are the requests naming its change id (the rate limiter's apart).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tools.bench.fixtures import SUBMIT, change_body, patient
from tools.bench.http_runs import run_concurrently
from tools.bench.report import pct
from tools.services.recording_proxy import RecordingProxy

WAIT = 30


def final_answer(client: httpx.Client, api: str, headers: dict[str, str], pid: str, phone: str) -> str:
    """Submit with ``Prefer: wait``; follow ``Location`` while the answer is a 202 for a running change."""
    r = client.post(
        f"{api}/changes",
        content=change_body(pid, phone),
        headers={**headers, "Idempotency-Key": str(uuid.uuid4()), "Prefer": f"wait={WAIT}"},
    )
    while r.status_code == 202 and r.json().get("status") != "awaiting_approval":
        time.sleep(float(r.headers.get("Retry-After", "1")))
        r = client.get(r.headers["Location"], headers={**headers, "Prefer": f"wait={WAIT}"})
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def direct_put(fhir_base: str, token: str) -> Callable[[httpx.Client, str], None]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def put(client: httpx.Client, pid: str) -> None:
        r = client.put(f"{fhir_base}/Patient/{pid}", json=patient(pid, "555-5555"), headers=headers)
        assert r.status_code == 200, r.text

    return put


def client_throughput(
    gw: Any, fhir_base: str, token: str, governed_ids: list[str], direct_ids: list[str], callers: int
) -> dict[str, Any]:
    headers = {**gw.headers("crm", SUBMIT), "Content-Type": "application/json"}
    outcomes: list[str] = []

    def governed(client: httpx.Client, pid: str) -> None:
        outcomes.append(final_answer(client, gw.api, headers, pid, "555-6666"))

    make = lambda: httpx.Client(timeout=WAIT + 30)  # noqa: E731
    governed_s = run_concurrently(governed_ids, callers, make, governed)
    direct_s = run_concurrently(direct_ids, callers, make, direct_put(fhir_base, token))
    completed = outcomes.count("completed")
    return {
        "callers": callers,
        "governedRate": completed / governed_s,
        "directRate": len(direct_ids) / direct_s,
        "ratio": (completed / governed_s) / (len(direct_ids) / direct_s),
        "outcomes": {s: outcomes.count(s) for s in set(outcomes)},
    }


def one_caller_latency(gw: Any, fhir_base: str, token: str, ids: list[str]) -> dict[str, Any]:
    headers = {**gw.headers("crm", SUBMIT), "Content-Type": "application/json"}
    put = direct_put(fhir_base, token)
    governed: list[float] = []
    direct: list[float] = []
    with httpx.Client(timeout=WAIT + 30) as client:
        for i, pid in enumerate(ids):
            t = time.perf_counter()
            assert final_answer(client, gw.api, headers, pid, f"555-{i:04d}") == "completed"
            governed.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            put(client, pid)
            direct.append((time.perf_counter() - t) * 1000)
    return {
        "governedP50": pct(governed, 0.5),
        "governedP95": pct(governed, 0.95),
        "directP50": pct(direct, 0.5),
        "directP95": pct(direct, 0.95),
        "changes": len(ids),
    }


def round_trips(stack: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """Per change across processes, through a recording proxy in front of Azurite's Table endpoint."""
    azurite = stack["azurite"]
    with RecordingProxy("127.0.0.1", azurite.table_port) as proxy:
        via_proxy = azurite.connection_string.replace(f":{azurite.table_port}/", f":{proxy.port}/")
        extra = {
            "WRITEBACK_DEV_INSTANCE_GROUPS": "http;durable,servicebus,timer",
            "WRITEBACK_STORAGE_CONNECTION_STRING": via_proxy,
        }
        with stack["another_gateway"](2, **extra) as (gw, _state):
            headers = {**gw.headers("crm", SUBMIT), "Content-Type": "application/json"}
            before: list[int] = []
            in_all: list[int] = []
            with httpx.Client(timeout=WAIT + 30) as client:
                final_answer(client, gw.api, headers, ids[0], "555-7000")  # warm-up: tables, tokens, clients
                for pid in ids[1:]:
                    r = client.post(
                        f"{gw.api}/changes",
                        content=change_body(pid, "555-7001"),
                        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
                    )
                    change_id = r.json()["changeId"]
                    before.append(len(proxy.naming(change_id)))
                    _wait_finished(proxy, change_id)
                    in_all.append(len(proxy.naming(change_id)))
            guards = len([r for r in proxy.requests if "guards" in r.path])
    return {
        "before202": statistics.median(before),
        "perChange": statistics.median(in_all),
        "perChangeMax": max(in_all),
        "rateLimiterPerChange": guards / len(ids),
        "changes": len(in_all),
    }


def _wait_finished(proxy: RecordingProxy, change_id: str, timeout: float = 30.0) -> None:
    """The last transition of a completed change is a batch naming ``"completed"``: watched at the proxy, so no
    status read is added."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(b"completed" in r.body for r in proxy.naming(change_id)):
            time.sleep(0.3)
            return
        time.sleep(0.02)
    raise AssertionError(f"change {change_id} did not complete")
