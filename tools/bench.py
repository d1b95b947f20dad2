"""Benchmarks against the bars of DESIGN.md §11, all in one run (``make bench``).

Starts its own services (Azurite in memory, the FHIR server with token checking, the token endpoint) and the gateway
as a subprocess in the local runtime, exactly as ``tests/e2e/conftest.py`` does, then measures:

1. direct writes/s (PUT straight to the FHIR server) against governed changes/s (submitted to the gateway, first
   submit to the last change seen ``completed``), same number of updates, same concurrency;
2. intake: accepts/s and p50/p95 of ``POST /api/v1/changes`` (the 202 only) against ``GET /api/v1/health`` on the
   same runtime as the no-op baseline;
3. counts per change: downstream calls (the FHIR server's ``/_control/stats``), activities (TaskScheduled events in
   the runtime's ``durable.db``), Table round trips (the port-level count of ``test_pipeline_costs``, in-process);
4. CPU per change in the project's own Python: the pipeline steps in-process against the fakes, ``process_time``
   per stage; plus the SDK replay cost per episode (``tools.bench_replay``).

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

from shared.caller_identity import ROLE_SUBMIT
from shared.dispatch import should_start
from shared.fakes.counting import CountingProxy
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore
from shared.intake import IntakeService
from shared.journal import ChangeJournal
from shared.models import Principal
from shared.pipeline import ChangePipeline
from shared.policy import Policy
from shared.targets import TargetRegistry
from tools.services.azurite import start_azurite
from tools.services.fhir_server import start_fhir_server
from tools.services.process import REPO_ROOT
from tools.services.token_endpoint import start_token_endpoint

FHIR_AUDIENCE = "api://local-ehr"
SUBMIT = ["Writeback.Submit"]
AUDIT = ["Writeback.Audit"]
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
        yield {"gw": gw, "fhir": fhir, "token": token, "state": state}


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


def governed_changes(gw: Any, ids: list[str], concurrency: int, timeout: float) -> dict[str, Any]:
    """Submit one change per Patient, poll until every one is terminal; changes/s from first submit to last done."""
    submit_headers = {**gw.headers("crm", SUBMIT), "Content-Type": "application/json"}
    audit_headers = gw.headers("crm", AUDIT)
    pending: list[str] = []
    lock = threading.Lock()
    submitted = threading.Event()

    def submit(client: httpx.Client, pid: str) -> None:
        r = client.post(
            f"{gw.api}/changes",
            content=change_body(pid, "555-2222"),
            headers={**submit_headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 202, r.text
        with lock:
            pending.append(r.json()["changeId"])

    statuses: dict[str, str] = {}
    finished_at: list[float] = []

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with lock:
                    todo = [c for c in pending if c not in statuses]
                if submitted.is_set() and not todo:
                    break
                for cid in todo:
                    body = client.get(f"{gw.api}/changes/{cid}", headers=audit_headers).json()
                    if body["status"] in TERMINAL:
                        statuses[cid] = body["status"]
                        finished_at.append(time.perf_counter())
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    start = time.perf_counter()
    poller.start()
    run_concurrently(ids, concurrency, lambda: httpx.Client(timeout=30), submit)
    submitted.set()
    poller.join()
    done = Counter(statuses.values())
    if len(statuses) < len(ids):
        done["unfinished"] = len(ids) - len(statuses)
    elapsed = (max(finished_at) if finished_at else time.perf_counter()) - start
    return {"rate": done["completed"] / elapsed, "seconds": elapsed, "outcomes": dict(done), "changeIds": pending}


def activities_per_change(state: Path, change_ids: list[str]) -> float | None:
    db = state / "durable.db"
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = []
        for cid in change_ids:
            rows = con.execute("SELECT event FROM history WHERE instance_id = ?", (cid,)).fetchall()
            counts.append(sum(1 for (e,) in rows if json.loads(e).get("EventType") == 4))  # TaskScheduled
    finally:
        con.close()
    return statistics.mean(counts) if counts else None


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


def in_process(changes: int, warmup: int) -> dict[str, Any]:
    """The pipeline steps in the orchestration's order, in-process over the fakes: CPU per stage, port-level counts."""
    targets = TargetRegistry.from_file(REPO_ROOT / "config" / "targets.yaml", {})
    # a fresh fake FHIR server per change: the fake snapshots its whole store for a transaction (atomicity), which
    # would otherwise grow with the number of changes and be counted as the project's CPU
    fakes = [FakeFhirClient()]
    calls: Counter[str] = Counter()
    journal = ChangeJournal(CountingProxy(FakeChangeStore(), calls, "changes"))
    payloads = FakePayloadStore()
    intake = IntakeService(
        idempotency=CountingProxy(FakeIdempotencyStore(), calls, "idempotency"),
        journal=journal,
        payloads=payloads,
        publisher=FakeMessagePublisher(),
        targets=targets,
        max_body_bytes=1_048_576,
        retention=timedelta(hours=72),
    )
    pipeline = ChangePipeline(
        journal=journal,
        payloads=payloads,
        targets=targets,
        policy=Policy.from_file(REPO_ROOT / "config" / "policy.yaml"),
        fhir=lambda _: fakes[0],
    )
    principal = Principal(app_id="crm", user_id="u1", roles=[ROLE_SUBMIT])
    stages: dict[str, list[float]] = {"intake": [], "dispatch": [], "prepare": [], "write": []}
    totals: list[float] = []
    table: list[int] = []
    downstream: list[int] = []
    for i in range(warmup + changes):
        pid = f"cpu-{i}"
        fake = fakes[0] = FakeFhirClient()
        fake.update(patient(pid))
        body = change_body(pid, f"555-{i:04d}")
        calls.clear()
        fake_calls = len(fake.calls)
        t0 = time.process_time()
        change_id = intake.submit(principal, f"key-{i}", body).change.change_id
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
            table.append(sum(calls.values()))
            downstream.append(len(fake.calls) - fake_calls)
    return {
        "stagesMedianMs": {k: statistics.median(v) for k, v in stages.items()},
        "totalMedianMs": statistics.median(totals),
        "totalP95Ms": pct(totals, 0.95),
        "tableRoundTrips": statistics.mean(table),
        "tableBreakdown": dict(calls),
        "fakeDownstreamCalls": statistics.mean(downstream),
        "activities": 2,
    }


def sdk_replay_per_episode() -> float | None:
    try:
        from devhost.app_index import load_app
        from tools.bench_replay import APP_DIR, sdk_replay_ms

        handler = load_app("replay_app", APP_DIR).functions["bench_chain"].func
        sdk_replay_ms(handler, 5, 10)
        return sdk_replay_ms(handler, 20, 50) / 20
    except Exception as exc:  # an optional figure: report it as not measured
        print(f"sdk replay not measured: {exc}", file=sys.stderr)
        return None


# --- report -------------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "not measured" if value is None else format(value, spec)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**NOT met**")


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    d, g, ih, ii, cpu = r["direct"], r["governed"], r["health"], r["intake"], r["cpu"]
    ratio = g["rate"] / d["rate"]
    iratio = ii["rate"] / ih["rate"]
    out = [
        ("Direct writes/s (PUT to FHIR server)", f"{d['rate']:.1f}", "", ""),
        ("Governed changes/s (submit → completed)", f"{g['rate']:.1f}", "", ""),
        ("Governed / direct", f"{ratio:.2f}", "≥ 0.2", verdict(ratio >= BARS["governed_ratio"])),
        ("Health GET/s (no-op baseline), p50 / p95 ms", f"{ih['rate']:.0f}, {ih['p50']:.1f} / {ih['p95']:.1f}", "", ""),
        (
            "OpenAPI GET/s (no storage), p50 / p95 ms",
            f"{r['openapi']['rate']:.0f}, {r['openapi']['p50']:.1f} / {r['openapi']['p95']:.1f}",
            "",
            "",
        ),
        ("Intake POST 202/s, p50 / p95 ms", f"{ii['rate']:.0f}, {ii['p50']:.1f} / {ii['p95']:.1f}", "", ""),
        ("Intake / health", f"{iratio:.2f}", "≥ 0.5", verdict(iratio >= BARS["intake_ratio"])),
    ]
    ds, act = r["downstreamPerChange"], r["activitiesPerChange"]
    out += [
        ("Downstream calls per change (FHIR server stats)", fmt(ds, ".2f"), "≤ 3", verdict(ds <= 3 if ds else None)),
        (
            "Activities per change (durable.db TaskScheduled)",
            fmt(act, ".2f"),
            "≤ 4",
            verdict(act <= 4 if act else None),
        ),
        (
            "Table round trips per change (in-process, port count)",
            f"{cpu['tableRoundTrips']:.0f}",
            "≤ 6",
            verdict(cpu["tableRoundTrips"] <= BARS["table"]),
        ),
    ]
    for name, ms in cpu["stagesMedianMs"].items():
        out.append((f"CPU {name} (median ms)", f"{ms:.3f}", "", ""))
    out.append(
        (
            "CPU per change, project Python (median ms)",
            f"{cpu['totalMedianMs']:.3f} (p95 {cpu['totalP95Ms']:.3f})",
            "≤ 3",
            verdict(cpu["totalMedianMs"] <= BARS["cpu_ms"]),
        )
    )
    out.append(("SDK replay per history episode (ms)", fmt(r["sdkReplayPerEpisodeMs"], ".3f"), "", ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--changes", type=int, default=100, help="updates in the direct and governed runs")
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--intake", type=int, default=200, help="requests in the intake and health runs")
    parser.add_argument("--cpu-changes", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/benchmarks.*")
    args = parser.parse_args()
    started = time.perf_counter()
    n, c = args.changes, args.concurrency
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "changes": n,
        "concurrency": c,
        "notes": ["gateway run with a copy of config/targets.yaml without rate_limit_per_second (50/s in the file)"],
    }
    print("in-process CPU and counts (fakes)...", flush=True)
    result["cpu"] = in_process(args.cpu_changes, warmup=50)
    result["sdkReplayPerEpisodeMs"] = sdk_replay_per_episode()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir, local_stack(Path(tmpdir)) as stack:
        gw, fhir, token = stack["gw"], stack["fhir"], stack["token"]
        print(f"services and gateway up ({time.perf_counter() - started:.0f} s); seeding...", flush=True)
        direct_ids = [f"bd-{uuid.uuid4().hex[:10]}" for _ in range(n)]
        gov_ids = [f"bg-{uuid.uuid4().hex[:10]}" for _ in range(n + 10)]
        intake_ids = [f"bi-{uuid.uuid4().hex[:10]}" for _ in range(args.intake)]
        seed(fhir.base_url, token, direct_ids + gov_ids + intake_ids, c)
        # warm-up: a few governed changes (imports, token cache, first orchestrations), not measured
        governed_changes(gw, gov_ids[n:], 2, timeout=60)
        print("direct writes...", flush=True)
        result["direct"] = {"rate": direct_writes(fhir.base_url, token, direct_ids, c)}
        print("governed changes...", flush=True)
        fhir.reset_stats()
        gov = governed_changes(gw, gov_ids[:n], c, timeout=150)
        stats = fhir.stats()
        result["governed"] = {k: v for k, v in gov.items() if k != "changeIds"}
        result["downstreamPerChange"] = stats["requests"] / n
        result["downstreamByMethod"] = stats.get("byMethod")
        result["activitiesPerChange"] = activities_per_change(stack["state"], gov["changeIds"])
        print("intake vs health...", flush=True)
        hh = gw.headers("crm", SUBMIT)
        result["health"] = latency_run(args.intake, c, lambda cl, _i: cl.get(f"{gw.api}/health"))
        result["openapi"] = latency_run(args.intake, c, lambda cl, _i: cl.get(f"{gw.api}/openapi.json"))
        sub = {**hh, "Content-Type": "application/json"}
        result["intake"] = latency_run(
            args.intake,
            c,
            lambda cl, i: cl.post(
                f"{gw.api}/changes",
                content=change_body(intake_ids[i], "555-3333"),
                headers={**sub, "Idempotency-Key": str(uuid.uuid4())},
            ),
        )
    result["runSeconds"] = time.perf_counter() - started
    table = rows(result)
    width = max(len(r[0]) for r in table)
    print(f"\n{'measure':<{width}}  {'value':<26} {'bar':<6} verdict")
    for name, value, bar, ok in table:
        print(f"{name:<{width}}  {value:<26} {bar:<6} {ok.replace('*', '')}")
    print(f"governed outcomes: {result['governed']['outcomes']}; run took {result['runSeconds']:.0f} s")
    print("note: " + "; ".join(result["notes"]))
    if not args.no_write:
        write_docs(result, table)


def write_docs(result: dict[str, Any], table: list[tuple[str, str, str, str]]) -> None:
    (DOCS / "benchmarks.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [
        "# Benchmarks",
        "",
        f"Run {result['date']} on {result['cores']} cores ({result['machine']}) by `make bench` "
        f"({result['runSeconds']:.0f} s). {result['changes']} updates per run, concurrency {result['concurrency']}. "
        "Raw figures: [benchmarks.json](benchmarks.json).",
        "",
        "| Measure | Value | Bar (DESIGN.md §11) | Verdict |",
        "|---|---|---|---|",
        *[f"| {name} | {value} | {bar} | {ok} |" for name, value, bar, ok in table],
        "",
        "## How each figure is taken",
        "",
        "- **Direct vs governed**: the same number of Patient updates (each to its own seeded Patient, a telecom "
        "change the demo policy allows), same concurrency, same run. Direct: `PUT` to the local FHIR server with a "
        "bearer "
        "token from the token endpoint. Governed: `POST /api/v1/changes` as `crm` (Easy Auth header), from the first "
        "submit until the last change is seen `completed` by polling its status (every ~20 ms per pending change). "
        "The gateway runs with a copy of `config/targets.yaml` **without `rate_limit_per_second`** (50/s in the "
        "file), so the target's rate limit does not cap the governed rate. A few governed changes are run first "
        "as warm-up and not counted.",
        "- **Intake vs health**: accepts/s and latency of `POST /api/v1/changes` up to the `202` (the changes are "
        "then processed in the background, in the same process, while the run goes on), against `GET /api/v1/health` "
        "on the same runtime. Health is not a pure no-op: it probes Table and Blob storage (Azurite round trips); "
        "`GET /api/v1/openapi.json` (no storage) is shown as a second reference.",
        "- **Downstream calls**: the FHIR server's request counter (`/_control/stats`), reset before the governed "
        "run, divided by the number of changes (status polling does not reach the FHIR server).",
        "- **Activities**: `TaskScheduled` events per orchestration instance in the runtime's `durable.db`.",
        "- **Table round trips**: counted at the storage ports in-process (the logic of "
        "`tests/integration/test_pipeline_costs.py`, over the fakes: one port call is one round trip).",
        "- **CPU**: the steps in the orchestration's order (intake = validation, idempotency claim, record, "
        "publish, enqueued; dispatch; prepare = read, plan, policy; write = write, verify) in-process against "
        "`shared/fakes` (FakeFhirClient with return=representation), `time.process_time()` per stage over "
        f"{len(result['cpu']['stagesMedianMs']) and 200} changes after 50 warm-up changes. It includes the fakes' "
        "own Python (in-memory stores, the fake FHIR server's copies and patching), so it overstates the project's "
        "share slightly; it excludes the runtime, the SDK replay and HTTP.",
        "- **SDK replay**: median cost of one replay of a 20-episode history divided by 20 (`tools.bench_replay`).",
        "",
        "## Reading",
        "",
        *reading(result),
        "",
    ]
    (DOCS / "benchmarks.md").write_text("\n".join(lines))


def reading(result: dict[str, Any]) -> list[str]:
    ratio = result["governed"]["rate"] / result["direct"]["rate"]
    iratio = result["intake"]["rate"] / result["health"]["rate"]
    out = [
        f"- Governed / direct = {ratio:.2f} (bar 0.2): {'met' if ratio >= 0.2 else 'not met'}. Each governed "
        "change costs two downstream calls plus six Table round trips to Azurite, a Service Bus hop and "
        "Durable episodes in SQLite, all on one runtime process sharing {cores} cores with Azurite and the FHIR "
        "server; the likely bottleneck is the runtime's single Python process (GIL) running intake, dispatcher, "
        "orchestrator episodes and activities together, with Azurite round trips on the critical path.".replace(
            "{cores}", str(result["cores"])
        ),
        f"- Intake / health = {iratio:.2f} (bar 0.5): {'met' if iratio >= 0.5 else 'not met'}. "
        f"`openapi.json`, which touches no storage, takes {result['openapi']['p50']:.0f} ms p50 at concurrency "
        f"{result['concurrency']} (it took 44 ms before the runtime's listener set TCP_NODELAY). An accept adds "
        "four Table round trips to Azurite and a publish to the local queue, and competes with the background "
        "processing of earlier accepts in the same process; where its time goes is not profiled yet.",
        f"- Downstream calls: {result['downstreamPerChange']:.2f} per change, by method "
        f"{result.get('downstreamByMethod')}; the few reads above 1 per change are not explained by this run "
        "(possibly re-reads when a step ran again).",
        f"- CPU per change {result['cpu']['totalMedianMs']:.2f} ms median (bar 3 ms): "
        f"{'met' if result['cpu']['totalMedianMs'] <= 3 else 'not met'}.",
    ]
    return out


if __name__ == "__main__":
    main()
