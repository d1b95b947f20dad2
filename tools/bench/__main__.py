"""Benchmarks against the bars of DESIGN.md §11, all in one run (``make bench``).

Starts its own services (Azurite in memory, the FHIR server with token checking, the token endpoint) and the gateway
as a subprocess in the local runtime, exactly as ``tests/e2e/conftest.py`` does, then measures:

1. direct writes/s (PUT straight to the FHIR server) against governed changes/s (submitted to the gateway, first
   submit to the last change seen ``completed``), same number of updates, same concurrency; the CPU each process
   (runtime, Azurite, FHIR server) spent meanwhile, which is what bounds the governed rate on a small machine;
2. intake: accepts/s and p50/p95 of ``POST /api/v1/changes`` (the 202 only) against the no-op
   ``GET /api/v1/health/live`` on the same runtime (``/health`` and ``/openapi.json`` as further references);
3. CPU per change in the project's own Python: the pipeline steps in-process against the fakes, ``process_time``
   per step, a sampled split by kind of work (validation, policy and diff, serialisation, the rest), the SDK replay
   of a change's episodes, and the storage client's CPU (the same steps against Azurite, minus the fakes' run);
4. counts per change: downstream calls (the FHIR server's ``/_control/stats``), activities (TaskScheduled events in
   the runtime's ``durable.db``), Table round trips (the port-level count of ``test_pipeline_costs``, in-process);
5. growth: SDK replay against history length (1-50 episodes), validation against Bundle size (1-500 entries),
   resource-lineage query against changes per resource (10-10,000), the runtime's memory over ``--memory-changes``
   further governed changes (1,000 by default to stay within five minutes; 10,000 with ``--memory-changes 10000``).

The gateway runs with a copy of ``config/targets.yaml`` whose ``rate_limit_per_second`` is removed, so the target's
rate limit (50/s) does not cap the governed rate. Prints a table and writes ``docs/benchmarks.md`` and
``docs/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.adapters.storage_transport import EnvironmentOnceTransport
from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_idempotency_store import TableIdempotencyStore
from shared.adapters.table_sweep_state import TableSweepState
from shared.api.caller_identity import ROLE_SUBMIT
from shared.app.dispatch import should_start
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.pipeline import ChangePipeline
from shared.core.models import Principal
from shared.core.policy import Policy
from shared.core.targets import TargetRegistry
from shared.fakes.counting import CountingProxy
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState
from tools.bench_growth import lineage_query_growth, sweep_queue_growth, validation_growth
from tools.services.azurite import start_azurite
from tools.services.fhir_server import start_fhir_server
from tools.services.process import REPO_ROOT
from tools.services.token_endpoint import start_token_endpoint

FHIR_AUDIENCE = "api://local-ehr"
SUBMIT = ["Writeback.Submit"]
AUDIT = ["Writeback.Audit"]
FINISHED_SQL = "SELECT instance_id FROM instances WHERE status IN ('Completed', 'Failed', 'Terminated', 'Canceled')"
TERMINAL = {"completed", "planned", "rejected", "conflict", "failed", "expired", "cancelled"}
DOCS = REPO_ROOT / "docs"
BARS = {
    "governed_ratio": 0.2,
    "intake_ratio": 0.5,
    "downstream": 3,
    "activities": 4,
    "table": 6,
    "cpu_ms": 3.0,
}


# --- helpers ------------------------------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def patient(pid: str, phone: str = "555-0000") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Bench", "given": ["Pat"]}],
        "gender": "female",
        "birthDate": "1980-01-01",
        "telecom": [{"system": "phone", "value": phone, "use": "home"}],
    }


def change_body(pid: str, phone: str) -> bytes:
    body = {"target": "local-ehr", "operation": "update", "resource": patient(pid, phone)}
    return json.dumps(body).encode()


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


# --- services and gateway -----------------------------------------------------------------------------------------


@contextmanager
def local_stack(tmp: Path) -> Iterator[dict[str, Any]]:
    """Token endpoint, FHIR server (token checking on), Azurite in memory and the gateway; all stopped at the end."""
    from tests.e2e.conftest import start_gateway, stop_gateway

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp / "signing-key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    logs = tmp / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        token_endpoint = start_token_endpoint(key_file=key_file, log_dir=logs)
        stack.callback(token_endpoint.stop)
        fhir = start_fhir_server(jwks_url=token_endpoint.jwks_url, audience=FHIR_AUDIENCE, log_dir=logs)
        stack.callback(fhir.stop)
        azurite = start_azurite(log_dir=logs)
        stack.callback(azurite.stop)
        resp = httpx.get(
            token_endpoint.url,
            params={"api-version": "2019-08-01", "resource": FHIR_AUDIENCE},
            headers={"X-IDENTITY-HEADER": token_endpoint.identity_header},
        )
        resp.raise_for_status()
        token = str(resp.json()["access_token"])
        targets = yaml.safe_load((REPO_ROOT / "config" / "targets.yaml").read_text())
        for target in targets["targets"].values():
            target.pop("rate_limit_per_second", None)
        targets_file = tmp / "targets.yaml"
        targets_file.write_text(yaml.safe_dump(targets))
        state = tmp / "gateway"
        state.mkdir()
        gw = start_gateway(
            azurite, token_endpoint, fhir, token, state, WRITEBACK_TARGETS_FILE=str(targets_file), PYTHONUNBUFFERED="1"
        )
        stack.callback(stop_gateway, gw)
        groups = {"runtime": gw.proc.pid, "Azurite": azurite.process.pid, "FHIR server": fhir.process.pid}
        yield {"gw": gw, "fhir": fhir, "token": token, "state": state, "azurite": azurite, "groups": groups}


def seed(fhir_base: str, token: str, ids: list[str], concurrency: int) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def put(client: httpx.Client, pid: str) -> None:
        r = client.put(f"{fhir_base}/Patient/{pid}", json=patient(pid), headers=headers)
        assert r.status_code in (200, 201), r.text

    run_concurrently(ids, concurrency, lambda: httpx.Client(timeout=30), put)


# --- processes: CPU and memory from /proc ---------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in a process group (Linux ``/proc``); None elsewhere."""
    total, seen = 0, False
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after ")": state ppid pgrp ... utime(11) stime(12) cutime(13) cstime(14)
            total += sum(int(f) for f in fields[11:15])
            seen = True
    return total / CLOCK_TICKS if seen else None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextmanager
def cpu_of(groups: dict[str, int], into: dict[str, Any]) -> Iterator[None]:
    """CPU seconds each process group (and this process) spent inside the block."""
    before = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    own = time.process_time()
    yield
    for name, pgid in groups.items():
        after = group_cpu_seconds(pgid)
        start = before[name]
        into[name] = None if after is None or start is None else after - start
    into["benchmark client"] = time.process_time() - own


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


@contextmanager
def durable_db(state: Path, timeout: float = 5.0) -> Iterator[sqlite3.Connection]:
    """The runtime's ``durable.db``, read-only, from this process."""
    con = sqlite3.connect(f"file:{state / 'durable.db'}?mode=ro", uri=True, timeout=timeout)
    try:
        yield con
    finally:
        con.close()


def history_counts(state: Path, change_ids: list[str]) -> dict[str, float | None]:
    """Per change, from the runtime's ``durable.db``: activities (TaskScheduled) and episodes (OrchestratorStarted)."""
    if not (state / "durable.db").exists() or not change_ids:
        return {"activities": None, "episodes": None}
    with durable_db(state) as con:
        per_change = [
            Counter(
                json.loads(e).get("EventType")
                for (e,) in con.execute("SELECT event FROM history WHERE instance_id = ?", (cid,))
            )
            for cid in change_ids
        ]
    return {
        "activities": statistics.mean(c[4] for c in per_change),
        "episodes": statistics.mean(c[12] for c in per_change),
    }


def finished_instances(state: Path) -> int:
    with durable_db(state) as con:
        return len(con.execute(FINISHED_SQL).fetchall())


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


# --- 3./4. in-process against the fakes ---------------------------------------------------------------------------


SPLIT_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("validation", ("shared/core/fhir_validation.py", "/fhir/resources/")),
    (
        "policy and diff",
        ("shared/core/planning.py", "shared/core/policy.py", "/jsonpatch", "/jsonpointer", "/fhirpathpy/"),
    ),
    ("the fakes (not the project's)", ("shared/fakes/",)),
    ("serialisation", ("/json/", "/pydantic/", "/pydantic_core/", "shared/table_codec.py")),
]


class StackSampler:
    """Samples one thread's stack every ~0.5 ms; each sample goes to the first rule matching any frame of it."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            frame = sys._current_frames().get(self.thread_id)
            files = []
            while frame is not None:
                files.append(frame.f_code.co_filename.replace(os.sep, "/"))
                frame = frame.f_back
            self.counts[self._bucket(files)] += 1

    @staticmethod
    def _bucket(files: list[str]) -> str:
        for name, needles in SPLIT_RULES:
            if any(needle in f for f in files for needle in needles):
                return name
        return "the rest (intake, journal, pipeline, writeback, models)"

    def __enter__(self) -> StackSampler:
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._interval)


def in_process(
    changes: int, warmup: int, *, tables: Any = None, sample: bool = False, prefix: str = "benchcpu"
) -> dict[str, Any]:
    """The pipeline steps in the orchestration's order, in-process: CPU per stage, port-level counts.

    Over the fakes by default; over real Table adapters when ``tables`` (a TableServiceClient) is given, so the
    difference is the storage client's CPU. ``sample`` adds a sampled split by kind of work.
    """
    targets = TargetRegistry.from_file(REPO_ROOT / "config" / "targets.yaml", {})
    # a fresh fake FHIR server per change: the fake snapshots its whole store for a transaction (atomicity), which
    # would otherwise grow with the number of changes and be counted as the project's CPU
    fakes = [FakeFhirClient()]
    calls: Counter[str] = Counter()
    change_store: Any = FakeChangeStore()
    idempotency_store: Any = FakeIdempotencyStore()
    sweep_state: Any = FakeSweepState()
    if tables is not None:
        change_store = TableChangeStore(tables, prefix=prefix)
        idempotency_store = TableIdempotencyStore(tables, prefix=prefix)
        sweep_state = TableSweepState(tables, prefix=prefix)
        for store in (change_store, idempotency_store, sweep_state):
            store.ensure_tables()
    # CPU seconds inside the ports: the storage ports (fakes, or the real Table adapters), and the other fakes
    stores: list[float] = [0.0]
    others: list[float] = [0.0]
    journal = ChangeJournal(CountingProxy(change_store, calls, "changes", spent=stores))
    payloads: Any = CountingProxy(FakePayloadStore(), Counter(), "payloads", spent=stores)
    intake = IntakeService(
        idempotency=CountingProxy(idempotency_store, calls, "idempotency", spent=stores),
        journal=journal,
        payloads=payloads,
        publisher=CountingProxy(FakeMessagePublisher(), Counter(), "publisher", spent=others),
        targets=targets,
        max_body_bytes=1_048_576,
        retention=timedelta(hours=72),
        sweep_state=CountingProxy(sweep_state, calls, "sweep", spent=stores),
        sweep_grace=timedelta(minutes=15),
    )
    pipeline = ChangePipeline(
        journal=journal,
        payloads=payloads,
        targets=targets,
        policy=Policy.from_file(REPO_ROOT / "config" / "policy.yaml"),
        fhir=lambda _: CountingProxy(fakes[0], Counter(), "fhir", spent=others),
    )
    principal = Principal(app_id="crm", user_id="u1", roles=[ROLE_SUBMIT])
    stages: dict[str, list[float]] = {"intake": [], "dispatch": [], "prepare": [], "write": []}
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
            fake = fakes[0] = FakeFhirClient()
            fake.update(patient(pid))
            body = change_body(pid, f"555-{i % 10000:04d}")
            calls.clear()
            fake_calls = len(fake.calls)
            stores[0] = others[0] = 0.0
            t0 = time.process_time()
            change_id = intake.submit(principal, f"key-{run}-{i}", body).change.change_id
            t1 = time.process_time()
            message = should_start(journal, json.dumps({"changeId": change_id, "target": "local-ehr"}).encode())
            t2 = time.process_time()
            assert message is not None
            pipeline.prepare(change_id)
            t3 = time.process_time()
            result = pipeline.write(change_id)
            t4 = time.process_time()
            assert result["status"] == "completed", result
            if i >= warmup:
                for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
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


INBOX_EVENTS = {0, 3, 5, 6, 8, 9, 11, 15}  # what an episode receives; the rest are what it recorded


def episode_contexts(events: list[dict[str, Any]], instance_id: str, orchestration_input: str | None) -> list[str]:
    """The context JSON each episode of a finished instance was given: the history so far (played) plus the
    episode's OrchestratorStarted and the events it received, built as the local runtime's engine builds it."""
    from devhost.durable.engine import episode_context

    contexts = []
    for start in (i for i, e in enumerate(events) if e.get("EventType") == 12):
        end = start + 1
        while end < len(events) and events[end].get("EventType") in INBOX_EVENTS:
            end += 1
        played = [{**e, "IsPlayed": True} for e in events[:start]]
        received = [{**e, "IsPlayed": False} for e in events[start:end]]
        contexts.append(json.dumps(episode_context(played, received, orchestration_input, instance_id)))
    return contexts


def orchestrator_replay_per_change(state: Path, change_ids: list[str], repeats: int = 20) -> float | None:
    """CPU ms of the SDK running the real ``writeback_orchestrator`` over every episode of a governed change, from
    the histories the run left in ``durable.db`` (median over the changes)."""
    if not (state / "durable.db").exists() or not change_ids:
        return None
    from devhost.app_index import load_app
    from orchestrators.writeback_orchestrator import ORCHESTRATOR_NAME

    handler = load_app("function_app", REPO_ROOT).functions[ORCHESTRATOR_NAME].func
    with durable_db(state) as con:
        per_change = []
        for cid in change_ids[:20]:
            events = [
                json.loads(e)
                for (e,) in con.execute("SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (cid,))
            ]
            (raw_input,) = con.execute("SELECT input FROM instances WHERE instance_id = ?", (cid,)).fetchone()
            contexts = episode_contexts(events, cid, raw_input)
            for context in contexts:
                handler(context)  # warm
            start = time.process_time()
            for _ in range(repeats):
                for context in contexts:
                    handler(context)
            per_change.append((time.process_time() - start) * 1000 / repeats)
    return statistics.median(per_change)


def replay_costs() -> dict[int, float]:
    """Median SDK replay ms of a history of k episodes, k = 1-10, 20, 50 (``tools/bench_app``'s chain); {} if the
    SDK cannot be loaded. Taken first, in a small process, so nothing else in the run skews it."""
    try:
        from devhost.app_index import load_app
        from tools.bench_replay import APP_DIR, sdk_replay_ms

        handler = load_app("replay_app", APP_DIR).functions["bench_chain"].func
        sdk_replay_ms(handler, 5, 10)
        return {k: sdk_replay_ms(handler, k, 60 if k <= 10 else 25) for k in (*range(1, 11), 20, 50)}
    except Exception as exc:  # an optional figure: report it as not measured
        print(f"sdk replay not measured: {exc}", file=sys.stderr)
        return {}


def replay_figures(costs: dict[int, float], episodes: float | None) -> dict[str, Any]:
    """Replay growth, and the replay CPU of one change: episode k replays a history of k episodes."""
    growth = [
        {"episodes": k, "medianMs": costs[k], "msPerEpisode": costs[k] / k} for k in (1, 5, 10, 20, 50) if k in costs
    ]
    per_change = None
    if episodes and costs and round(episodes) <= 10:
        per_change = sum(costs[k] for k in range(1, round(episodes) + 1))
    return {"growth": growth, "perChangeMs": per_change, "episodesPerChange": episodes}


# --- report -------------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "not measured" if value is None else format(value, spec)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**NOT met**")


def derived(r: dict[str, Any]) -> dict[str, Any]:
    """Ratios and per-change figures computed from the raw measurements."""
    n, cpu = r["changes"], r["cpu"]
    fakes_ms = cpu["storesMedianMs"] + cpu["otherFakesMedianMs"]
    replay_ms = r["replay"].get("orchestratorPerChangeMs") or r["replay"]["perChangeMs"]
    project_ms = cpu["outsidePortsMedianMs"] + (replay_ms or 0.0)
    per_change = {k: (v * 1000 / n if v is not None else None) for k, v in r["governed"]["cpu"].items()}
    busy = [v for k, v in per_change.items() if v is not None and k != "benchmark client"]
    intake_cpu = r["intake"].get("cpu", {}).get("runtime")
    services = [v for v in (per_change.get("Azurite"), per_change.get("FHIR server")) if v]
    azurite_per_trip = per_change["Azurite"] / r["cpu"]["tableRoundTrips"] if per_change.get("Azurite") else None
    return {
        "governedRatio": r["governed"]["rate"] / r["direct"]["rate"],
        "intakeRatio": r["intake"]["rate"] / r["live"]["rate"],
        "projectCpuMs": project_ms,
        "fakesCpuMs": fakes_ms,
        "storageClientCpuMs": r["cpuTables"]["storesMedianMs"] if r.get("cpuTables") else None,
        "cpuMsPerChange": per_change,
        "governedCeiling": (r["cores"] * 1000 / sum(busy)) if busy else None,
        "runtimeCpuMsPerAccept": intake_cpu * 1000 / r["intakeRequests"] if intake_cpu is not None else None,
        # the governed rate the machine could reach if the runtime cost no CPU at all
        "ceilingWithoutRuntime": r["cores"] * 1000 / sum(services) if len(services) == 2 else None,
        "governedNeeded": BARS["governed_ratio"] * r["direct"]["rate"],
        # Azurite's CPU per Table round trip, and the accept rate its four round trips alone would allow
        "azuriteMsPerRoundTrip": azurite_per_trip,
        "intakeCeilingWithoutRuntime": r["cores"] * 1000 / (4 * azurite_per_trip) if azurite_per_trip else None,
        "intakeNeeded": BARS["intake_ratio"] * r["live"]["rate"],
    }


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    d = derived(r)
    g, live, ii, cpu = r["governed"], r["live"], r["intake"], r["cpu"]
    lat = "{rate:.0f}/s, {p50:.1f} / {p95:.1f}".format
    out = [
        ("Direct writes/s (PUT to the FHIR server)", f"{r['direct']['rate']:.1f}", "", ""),
        ("Governed changes/s (submit → completed)", f"{g['rate']:.1f}", "", ""),
        (
            "Governed / direct",
            f"{d['governedRatio']:.3f}",
            "≥ 0.2",
            verdict(d["governedRatio"] >= BARS["governed_ratio"]),
        ),
        ("No-op GET /health/live: rate, p50 / p95 ms", lat(**live), "", ""),
        ("Intake POST → 202: rate, p50 / p95 ms", lat(**ii), "", ""),
        ("Intake / no-op", f"{d['intakeRatio']:.3f}", "≥ 0.5", verdict(d["intakeRatio"] >= BARS["intake_ratio"])),
        ("Readiness GET /health (2 storage probes): rate, p50 / p95 ms", lat(**r["health"]), "", ""),
        ("GET /openapi.json (no storage): rate, p50 / p95 ms", lat(**r["openapi"]), "", ""),
    ]
    ds, act = r["downstreamPerChange"], r["history"]["activities"]
    out += [
        ("Downstream calls per change (FHIR server stats)", fmt(ds, ".2f"), "≤ 3", verdict(ds <= 3 if ds else None)),
        ("Activities per change (durable.db)", fmt(act, ".2f"), "≤ 4", verdict(act <= 4 if act else None)),
        (
            "Table round trips per change (port count)",
            f"{cpu['tableRoundTrips']:.0f}",
            "≤ 6",
            verdict(cpu["tableRoundTrips"] <= BARS["table"]),
        ),
    ]
    for name, ms in cpu["stagesMedianMs"].items():
        out.append((f"CPU step {name} (median ms, over the fakes)", f"{ms:.3f}", "", ""))
    for name, part in cpu.get("split", {}).items():
        out.append((f"CPU kind (sampled): {name} (ms, {part['share']:.0%})", f"{part['ms']:.3f}", "", ""))
    episodes = fmt(r["replay"]["episodesPerChange"], ".0f")
    out.append(
        (
            f"CPU SDK replay of a change's {episodes} episodes, writeback_orchestrator (ms)",
            fmt(r["replay"].get("orchestratorPerChangeMs"), ".3f"),
            "",
            "",
        )
    )
    out.append(
        (
            f"CPU SDK replay of {episodes} episodes, synthetic chain (ms)",
            fmt(r["replay"]["perChangeMs"], ".3f"),
            "",
            "",
        )
    )
    out.append(
        (
            "CPU per change, project Python (steps outside the ports + replay, ms)",
            f"{d['projectCpuMs']:.3f}",
            "≤ 3",
            verdict(d["projectCpuMs"] <= BARS["cpu_ms"]),
        )
    )
    out.append(("CPU inside the fakes, excluded above (timed at the ports, ms)", f"{d['fakesCpuMs']:.3f}", "", ""))
    out.append(
        (
            "CPU per change, Table adapters + azure-data-tables (timed at the ports, ms)",
            fmt(d["storageClientCpuMs"], ".3f"),
            "",
            "",
        )
    )
    for name, ms in d["cpuMsPerChange"].items():
        out.append((f"CPU per governed change, {name} process (ms)", fmt(ms, ".1f"), "", ""))
    out.append(
        ("Ceiling: cores ÷ CPU per change of all processes (changes/s)", fmt(d["governedCeiling"], ".0f"), "", "")
    )
    out.append(
        (
            "Ceiling if the runtime cost nothing: cores ÷ (Azurite + FHIR server)",
            fmt(d["ceilingWithoutRuntime"], ".0f"),
            f"{d['governedNeeded']:.0f} needed",
            "",
        )
    )
    out.append(
        (
            "Runtime CPU per intake accept, with background processing (ms)",
            fmt(d["runtimeCpuMsPerAccept"], ".1f"),
            "",
            "",
        )
    )
    out.append(("Azurite CPU per Table round trip (ms)", fmt(d["azuriteMsPerRoundTrip"], ".2f"), "", ""))
    out.append(
        (
            "Accept ceiling from Azurite's 4 round trips alone (accepts/s)",
            fmt(d["intakeCeilingWithoutRuntime"], ".0f"),
            f"{d['intakeNeeded']:.0f} needed",
            "",
        )
    )
    return out


def growth_rows(r: dict[str, Any]) -> list[str]:
    g = r["growth"]
    lines = ["| Growth | Size | Median ms | Per unit | Ratio to smallest |", "|---|---|---|---|---|"]
    for row in r["replay"]["growth"]:
        first = r["replay"]["growth"][0]["medianMs"]
        lines.append(
            f"| SDK replay, history of n episodes | {row['episodes']} | {row['medianMs']:.3f} | "
            f"{row['msPerEpisode']:.3f} ms/episode | {row['medianMs'] / first:.1f} |"
        )
    for row in g["validation"]:
        lines.append(
            f"| Validation, Bundle of n Patients | {row['size']} | {row['medianMs']:.2f} | "
            f"{row['msPerEntry']:.3f} ms/entry | {row['ratioTo1'] or 1:.0f} |"
        )
    for row in g["lineage"]:
        lines.append(
            f"| Resource lineage, first page (of {row['pageSize']}), n changes | {row['size']} | "
            f"{row['medianMs']:.2f} | all {row['pages']} pages {row['allPagesMedianMs']:.0f} ms | "
            f"{row['ratioToSmallest']:.1f} |"
        )
    for row in g.get("sweep", []):
        lines.append(
            f"| Outbox sweep (key range), n changes in the table | {row['size']} | {row['sweepMs']:.1f} | "
            f"read {row['sweepRead']}; whole-table filter before: {row['fullScanMs']:.1f} ms | |"
        )
        lines.append(
            f"| Failed queue first page (index + point reads), n changes | {row['size']} | {row['queueMs']:.1f} | "
            f"table scan: {row['queueScanMs']:.1f} ms | |"
        )
    mem = g["memory"]
    for row in mem:
        lines.append(
            f"| Runtime resident memory after n further changes | {row['changes']} | | {fmt(row['rssMb'])} MB | |"
        )
    lines += ["", "| Further changes (chunk ending at) | Changes/s in the chunk | CPU ms per change by process |"]
    lines.append("|---|---|---|")
    for row in mem[1:]:
        per = ", ".join(f"{k} {v:.1f}" for k, v in row.get("cpuMsPerChange", {}).items())
        lines.append(f"| {row['changes']} | {row.get('rate', 0):.1f} | {per} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--changes", type=int, default=100, help="updates in the direct and governed runs")
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--intake", type=int, default=200, help="requests in the intake and no-op runs")
    parser.add_argument("--cpu-changes", type=int, default=300)
    parser.add_argument("--memory-changes", type=int, default=1000, help="further governed changes for memory")
    parser.add_argument("--lineage-sizes", default="10,100,1000,10000")
    parser.add_argument("--sweep-sizes", default="1000,10000", help="changes in the table for the sweeper figures")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/benchmarks.*")
    parser.add_argument("--report", type=Path, help="do not measure: report again from a saved benchmarks.json")
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()), write=not args.no_write)
        return
    started = time.perf_counter()
    n, c = args.changes, args.concurrency
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "changes": n,
        "concurrency": c,
        "intakeRequests": args.intake,
        "command": " ".join(["python -m tools.bench", *sys.argv[1:]]),
        "notes": ["gateway run with a copy of config/targets.yaml without rate_limit_per_second (50/s in the file)"],
    }
    print("in-process CPU over the fakes (timed, then sampled)...", flush=True)
    result["cpu"] = in_process(args.cpu_changes, warmup=50)
    sampled = in_process(args.cpu_changes * 3, warmup=0, sample=True)
    result["cpu"]["split"] = {
        k: {"share": v["share"], "ms": v["share"] * result["cpu"]["totalMedianMs"]} for k, v in sampled["split"].items()
    }
    result["cpu"]["splitSamples"] = sampled["splitSamples"]
    replay = replay_costs()
    print("validation growth...", flush=True)
    result["growth"] = {"validation": validation_growth()}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir, local_stack(Path(tmpdir)) as stack:
        gw, fhir, token, groups = stack["gw"], stack["fhir"], stack["token"], stack["groups"]
        print(f"services and gateway up ({time.perf_counter() - started:.0f} s); seeding...", flush=True)
        from azure.data.tables import TableServiceClient

        tables = TableServiceClient.from_connection_string(
            stack["azurite"].connection_string, transport=EnvironmentOnceTransport()
        )
        result["cpuTables"] = in_process(args.cpu_changes, warmup=50, tables=tables)
        direct_ids = [f"bd-{uuid.uuid4().hex[:10]}" for _ in range(n)]
        gov_ids = [f"bg-{uuid.uuid4().hex[:10]}" for _ in range(n + 10)]
        intake_ids = [f"bi-{uuid.uuid4().hex[:10]}" for _ in range(args.intake)]
        seed(fhir.base_url, token, direct_ids + gov_ids + intake_ids, c)
        # warm-up: a few governed changes (imports, token cache, first orchestrations), not measured
        governed_changes(gw, stack["state"], gov_ids[n:], 2, timeout=60)
        print("direct writes...", flush=True)
        result["direct"] = {"rate": direct_writes(fhir.base_url, token, direct_ids, c)}
        print("governed changes...", flush=True)
        fhir.reset_stats()
        cpu: dict[str, Any] = {}
        with cpu_of(groups, cpu):
            gov = governed_changes(gw, stack["state"], gov_ids[:n], c, timeout=150)
        stats = fhir.stats()
        result["governed"] = {**{k: v for k, v in gov.items() if k != "changeIds"}, "cpu": cpu}
        result["downstreamPerChange"] = stats["requests"] / n
        result["downstreamByMethod"] = stats.get("byMethod")
        result["history"] = history_counts(stack["state"], gov["changeIds"])
        orchestrator_replay = orchestrator_replay_per_change(stack["state"], gov["changeIds"])
        print("intake vs no-op...", flush=True)
        hh = gw.headers("crm", SUBMIT)
        result["live"] = latency_run(args.intake, c, lambda cl, _i: cl.get(f"{gw.api}/health/live"))
        result["health"] = latency_run(args.intake, c, lambda cl, _i: cl.get(f"{gw.api}/health"))
        result["openapi"] = latency_run(args.intake, c, lambda cl, _i: cl.get(f"{gw.api}/openapi.json"))
        sub = {**hh, "Content-Type": "application/json"}
        intake_cpu: dict[str, Any] = {}
        with cpu_of(groups, intake_cpu):
            result["intake"] = latency_run(
                args.intake,
                c,
                lambda cl, i: cl.post(
                    f"{gw.api}/changes",
                    content=change_body(intake_ids[i], "555-3333"),
                    headers={**sub, "Idempotency-Key": str(uuid.uuid4())},
                ),
            )
        result["intake"]["cpu"] = intake_cpu
        print("lineage growth...", flush=True)
        sizes = [int(x) for x in args.lineage_sizes.split(",") if x]
        result["growth"]["lineage"] = lineage_query_growth(stack["azurite"].connection_string, sizes)
        print(f"memory over {args.memory_changes} further governed changes...", flush=True)
        result["growth"]["memory"] = memory_run(stack, args.memory_changes, c)
        # Last: Azurite slows down for everything once it holds many entities.
        print("sweeper and queue growth...", flush=True)
        sizes = [int(x) for x in args.sweep_sizes.split(",") if x]
        result["growth"]["sweep"] = sweep_queue_growth(stack["azurite"].connection_string, sizes)
    result["replay"] = replay_figures(replay, result["history"]["episodes"])
    result["replay"]["orchestratorPerChangeMs"] = orchestrator_replay
    result["runSeconds"] = time.perf_counter() - started
    report(result, write=not args.no_write)


def report(result: dict[str, Any], *, write: bool) -> None:
    result["derived"] = derived(result)
    table = rows(result)
    width = max(len(r[0]) for r in table)
    print(f"\n{'measure':<{width}}  {'value':<26} {'bar':<6} verdict")
    for name, value, bar, ok in table:
        print(f"{name:<{width}}  {value:<26} {bar:<6} {ok.replace('*', '')}")
    print("\n".join(growth_rows(result)))
    print(f"governed outcomes: {result['governed']['outcomes']}; run took {result['runSeconds']:.0f} s")
    if write:
        write_docs(result, table)


def write_docs(result: dict[str, Any], table: list[tuple[str, str, str, str]]) -> None:
    (DOCS / "benchmarks.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [
        "# Benchmarks",
        "",
        f"Run {result['date']} on {result['cores']} cores ({result['machine']}) by `{result['command']}` "
        f"(`make bench` runs it; {result['runSeconds']:.0f} s). "
        f"{result['changes']} updates per run, concurrency {result['concurrency']}. "
        "Raw figures: [benchmarks.json](benchmarks.json). How the figures were reduced, with a profile before and "
        "after: [benchmarks-profile.md](benchmarks-profile.md).",
        "",
        "| Measure | Value | Bar (DESIGN.md §11) | Verdict |",
        "|---|---|---|---|",
        *[f"| {name} | {value} | {bar} | {ok} |" for name, value, bar, ok in table],
        "",
        *growth_rows(result),
        "",
        "## Reading",
        "",
        *reading(result),
        "",
        "## How each figure is taken",
        "",
        *HOW,
        "",
    ]
    (DOCS / "benchmarks.md").write_text("\n".join(lines))


HOW = [
    "- **Direct vs governed**: the same number of Patient updates (each to its own seeded Patient, a telecom "
    "change the demo policy allows), same concurrency, same run. Direct: `PUT` to the local FHIR server with a "
    "bearer token from the token endpoint. Governed: `POST /api/v1/changes` as `crm` (Easy Auth header), from the "
    "first submit until the last change's orchestration finished, watched in the runtime's `durable.db` (read-only, "
    "every 20 ms) so that no status polling adds to the load; each change's status is then read once through the "
    "API. "
    "The gateway runs with a copy of `config/targets.yaml` **without `rate_limit_per_second`** (50/s in the file), "
    "so the target's rate limit does not cap the governed rate. A few governed changes run first as warm-up.",
    "- **CPU per process**: user + system CPU of each process group (`/proc/<pid>/stat`) over the governed run, "
    "divided by the changes; the ceiling is the cores divided by the sum over the runtime, Azurite and the FHIR "
    "server — the rate the machine could reach if nothing else limited it.",
    "- **Intake vs no-op**: accepts/s and latency of `POST /api/v1/changes` up to the `202` (the changes are then "
    "processed in the background by the same runtime while the run goes on), against `GET /api/v1/health/live`, an "
    "HTTP function that returns a constant, on the same runtime and concurrency. Readiness (`/health`, two storage "
    "probes) and `/openapi.json` (no storage) are shown as further references.",
    "- **Downstream calls**: the FHIR server's request counter (`/_control/stats`), reset before the governed "
    "run, divided by the changes (status polling does not reach the FHIR server).",
    "- **Activities and episodes**: `TaskScheduled` and `OrchestratorStarted` events per instance in `durable.db`.",
    "- **Table round trips**: counted at the storage ports in-process (the logic of "
    "`tests/integration/test_pipeline_costs.py`; one port call is one round trip).",
    "- **CPU steps**: intake (validation, idempotency claim, record, publish, enqueued), dispatch, prepare (read, "
    "plan, policy), write (write, verify) in-process over `shared/fakes` (FakeFhirClient with "
    "return=representation), `time.process_time()` per step, median over the changes after 50 warm-up changes. "
    "**CPU kinds**: a second pass, its main thread's stack sampled every ~0.5 ms; a sample counts as validation when "
    "any frame is in `shared/core/fhir_validation.py` or `fhir.resources`, else policy and diff (`planning`, `policy`, "
    "jsonpatch, fhirpathpy), else the fakes' own code, else serialisation (json, pydantic, the Table codec), else "
    "the rest; shares are scaled to the timed median. **Replay**: the real `writeback_orchestrator` run by the SDK "
    "over every episode of 20 governed changes, from the histories the run left in `durable.db` (episode k replays "
    "the k-1 episodes before it), median per change; the synthetic chain's figure is shown beside it. "
    "**Project Python** = the steps minus the CPU spent inside the ports (the fakes, timed at each call) plus that "
    "replay. **Table adapters + client** = the CPU inside the storage ports when the same steps run against "
    "Azurite with the real Table adapters (this process's CPU, not Azurite's).",
    "- **Growth**: SDK replay of `tools/bench_app`'s chain with n episodes in the history; `validate_resource` on a "
    "collection Bundle of n Patients (`tools/bench_growth.py`); `resource_history` on Azurite for one resource "
    "with n indexed changes; the runtime process's VmRSS after each fifth of `--memory-changes` further changes; "
    "on Azurite, with n changes of the previous day in the changes table (1 % failed) and 20 recent accepted ones: "
    "one outbox sweep beside the whole-table filter the sweeper ran before, and the failed queue's first page through "
    "the queue index beside the same filter as a scan. Azurite keeps entities in memory and filters them cheaply, "
    "while its point reads slow down as it fills, so these figures do not show Table Storage's costs: there a "
    "filter on a non-key property reads every entity of the table, and a point read or a key range does not.",
]


def reading(result: dict[str, Any]) -> list[str]:
    d = result["derived"]
    per = d["cpuMsPerChange"]
    mem = result["growth"]["memory"]
    mem_line = ""
    if len(mem) > 1 and mem[0]["rssMb"] and mem[-1]["rssMb"]:
        slope = (mem[-1]["rssMb"] - mem[1]["rssMb"]) / max(1, mem[-1]["changes"] - mem[1]["changes"]) * 1000
        mem_line = (
            f"- Memory: the runtime held {mem[0]['rssMb']:.0f} MB before and {mem[-1]['rssMb']:.0f} MB after "
            f"{mem[-1]['changes']} further changes ({slope:+.1f} MB per 1,000 changes after the first fifth). "
            "Growth is front-loaded: in a 10,000-change run it levelled off near 190 MB after about 4,000 changes "
            "(`--memory-changes 10000`; figures in benchmarks-profile.md)."
        )
    ceiling = d["governedCeiling"]
    return [
        f"- Governed / direct = {d['governedRatio']:.3f} (bar 0.2): "
        f"{'met' if d['governedRatio'] >= 0.2 else 'not met'}. A direct write is one HTTP request the FHIR server "
        f"answers in well under a millisecond of CPU; a governed change cost {fmt(per.get('runtime'))} ms of CPU in "
        f"the runtime, {fmt(per.get('Azurite'))} ms in Azurite and {fmt(per.get('FHIR server'))} ms in the FHIR "
        f"server. With all three on {result['cores']} cores the machine cannot exceed about {fmt(ceiling, '.0f')} "
        f"changes/s even if nothing waited on anything, while the bar asks for {d['governedNeeded']:.0f}/s; "
        "the runtime is one Python process, so its GIL caps it at about "
        f"{fmt(1000 / per['runtime'] if per.get('runtime') else None, '.0f')}/s. Even a runtime that cost no CPU at "
        f"all would leave a ceiling of {fmt(d['ceilingWithoutRuntime'], '.0f')}/s from Azurite and the FHIR server "
        "alone.",
        f"- Intake / no-op = {d['intakeRatio']:.3f} (bar 0.5): "
        f"{'met' if d['intakeRatio'] >= 0.5 else 'not met'}. An accept is four Table round trips (the claim, the "
        "record and its first lineage event in one transaction, the resource index, the enqueued transition), a "
        f"publish and the validation; it cost {fmt(d['runtimeCpuMsPerAccept'])} ms of runtime CPU per accept while "
        "earlier accepts were processed in the background by the same process; the no-op costs the HTTP layer only. "
        f"Azurite spends about {fmt(d['azuriteMsPerRoundTrip'], '.1f')} ms of CPU per round trip, so its share of "
        f"an accept alone allows about {fmt(d['intakeCeilingWithoutRuntime'], '.0f')} accepts/s on this machine, "
        f"against the {d['intakeNeeded']:.0f}/s the bar asks for.",
        f"- Project Python per change: {d['projectCpuMs']:.2f} ms (bar 3 ms): "
        f"{'met' if d['projectCpuMs'] <= 3 else 'not met'}; the storage client (azure-data-tables, in-process) adds "
        f"{fmt(d['storageClientCpuMs'], '.1f')} ms per change, which is the largest single cost in the runtime.",
        f"- Downstream calls: {result['downstreamPerChange']:.2f} per change, by method "
        f"{result.get('downstreamByMethod')}.",
        *([mem_line] if mem_line else []),
    ]


if __name__ == "__main__":
    main()
