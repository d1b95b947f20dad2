"""The runs over HTTP against the local stack: direct writes to the FHIR server against governed changes through
the gateway, intake and no-op latency, and the runtime's memory and costs over further governed changes."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tools.bench.cpu_sampling import cpu_of, rss_mb
from tools.bench.durable_db import FINISHED_SQL, durable_db, finished_instances
from tools.bench.fixtures import AUDIT, SUBMIT, change_body, patient
from tools.bench.report import pct

TERMINAL = {"completed", "planned", "rejected", "conflict", "failed", "expired", "cancelled"}


def submit_change(client: httpx.Client, api: str, headers: dict[str, str], pid: str, phone: str) -> str:
    """POST one governed update with a fresh Idempotency-Key; its change id (the run fails on anything but 202)."""
    r = client.post(
        f"{api}/changes",
        content=change_body(pid, phone),
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["changeId"])


def run_concurrently(items: list[Any], concurrency: int, make_client: Callable[[], httpx.Client], fn: Any) -> float:
    """Run ``fn(client, item)`` over items with ``concurrency`` threads (one keep-alive client each); wall seconds."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def call(item: Any) -> Any:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = make_client()
            with lock:
                clients.append(client)
        return fn(client, item)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, items))
    elapsed = time.perf_counter() - start
    for c in clients:
        c.close()
    return elapsed


def seed(fhir_base: str, token: str, ids: list[str], concurrency: int) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def put(client: httpx.Client, pid: str) -> None:
        r = client.put(f"{fhir_base}/Patient/{pid}", json=patient(pid), headers=headers)
        assert r.status_code in (200, 201), r.text

    run_concurrently(ids, concurrency, lambda: httpx.Client(timeout=30), put)


# --- 1. direct vs governed ----------------------------------------------------------------------------------------


def direct_writes(fhir_base: str, token: str, ids: list[str], concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def put(client: httpx.Client, pid: str) -> None:
        r = client.put(f"{fhir_base}/Patient/{pid}", json=patient(pid, "555-1111"), headers=headers)
        assert r.status_code == 200, r.text

    elapsed = run_concurrently(ids, concurrency, lambda: httpx.Client(timeout=30), put)
    return len(ids) / elapsed


def governed_changes(gw: Any, state: Path, ids: list[str], concurrency: int, timeout: float) -> dict[str, Any]:
    """Submit one change per Patient; changes/s from the first submit until the last orchestration finished.

    Completion is watched in the runtime's ``durable.db`` (read-only, from this process), not by polling the API,
    so the measurement does not add status requests to the runtime's and Azurite's load; each change's status is
    then read once through the API, after the clock stopped.
    """
    submit_headers = {**gw.headers("crm", SUBMIT), "Content-Type": "application/json"}
    pending: set[str] = set()
    lock = threading.Lock()
    submitted = threading.Event()

    def submit(client: httpx.Client, pid: str) -> None:
        change_id = submit_change(client, gw.api, submit_headers, pid, "555-2222")
        with lock:
            pending.add(change_id)

    finished_at: dict[str, float] = {}

    def watch() -> None:
        with durable_db(state, timeout=30) as con:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                rows = con.execute(FINISHED_SQL).fetchall()
                now = time.perf_counter()
                with lock:
                    for (iid,) in rows:
                        if iid in pending and iid not in finished_at:
                            finished_at[iid] = now
                    if submitted.is_set() and len(finished_at) == len(pending):
                        return
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    start = time.perf_counter()
    watcher.start()
    run_concurrently(ids, concurrency, lambda: httpx.Client(timeout=30), submit)
    submitted.set()
    watcher.join()
    elapsed = (max(finished_at.values()) if finished_at else time.perf_counter()) - start
    audit_headers = gw.headers("crm", AUDIT)
    with httpx.Client(timeout=30) as client:
        statuses = [client.get(f"{gw.api}/changes/{cid}", headers=audit_headers).json()["status"] for cid in pending]
    done = Counter(s if s in TERMINAL else "unfinished" for s in statuses)
    rate = done["completed"] / elapsed
    return {"rate": rate, "seconds": elapsed, "outcomes": dict(done), "changeIds": sorted(pending)}


def memory_run(stack: dict[str, Any], n: int, concurrency: int, checkpoints: int = 5) -> list[dict[str, Any]]:
    """After each 1/``checkpoints`` of ``n`` further governed changes: the runtime's resident memory, and that chunk's
    rate and CPU per change in each process (how the costs grow as the stores fill up)."""
    gw, fhir, token, state = stack["gw"], stack["fhir"], stack["token"], stack["state"]
    headers = {**gw.headers("crm", SUBMIT), "Content-Type": "application/json"}
    ids = [f"bm-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    seed(fhir.base_url, token, ids, concurrency)
    done_before = finished_instances(state)
    samples: list[dict[str, Any]] = [{"changes": 0, "rssMb": rss_mb(gw.proc.pid)}]
    step = max(1, n // checkpoints)

    def submit(client: httpx.Client, pid: str) -> None:
        submit_change(client, gw.api, headers, pid, "555-4444")

    for first in range(0, n, step):
        chunk = ids[first : first + step]
        cpu: dict[str, Any] = {}
        started = time.perf_counter()
        with cpu_of(stack["groups"], cpu):
            run_concurrently(chunk, concurrency, lambda: httpx.Client(timeout=30), submit)
            deadline = time.monotonic() + 60 + len(chunk)
            while finished_instances(state) < done_before + first + len(chunk):
                assert time.monotonic() < deadline, "governed changes did not finish in time"
                time.sleep(0.2)
        samples.append(
            {
                "changes": first + len(chunk),
                "rssMb": rss_mb(gw.proc.pid),
                "rate": len(chunk) / (time.perf_counter() - started),
                "cpuMsPerChange": {k: v * 1000 / len(chunk) for k, v in cpu.items() if v is not None},
            }
        )
    return samples


# --- 2. intake vs health ------------------------------------------------------------------------------------------


def latency_run(n: int, concurrency: int, request: Callable[[httpx.Client, int], httpx.Response]) -> dict[str, float]:
    samples: list[float] = []

    def one(client: httpx.Client, i: int) -> None:
        t = time.perf_counter()
        r = request(client, i)
        samples.append((time.perf_counter() - t) * 1000)
        assert r.status_code in (200, 202), r.text

    elapsed = run_concurrently(list(range(n)), concurrency, lambda: httpx.Client(timeout=30), one)
    return {"rate": n / elapsed, "p50": pct(samples, 0.5), "p95": pct(samples, 0.95)}
