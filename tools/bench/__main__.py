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
   the runtime's ``durable.db``), Table round trips across processes (a recording proxy in front of Azurite, on a
   gateway of two instances) and in one process (the port-level count of ``test_pipeline_costs``);
6. as a client sees it (``client_runs``): governed changes/s with ``Prefer: wait`` against direct writes/s, the same
   callers (``--callers``, 6) in the same run, and one caller's submit → final answer against one direct write, at
   one instance and at ``--scale-out`` instances;
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
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.bench.client_runs import client_throughput, one_caller_latency, round_trips
from tools.bench.cpu_sampling import cpu_of
from tools.bench.durable_db import history_counts
from tools.bench.fixtures import SUBMIT, change_body, local_stack, table_service
from tools.bench.http_runs import direct_writes, governed_changes, latency_run, memory_run, seed
from tools.bench.in_process_runs import in_process
from tools.bench.report import report
from tools.bench.sdk_replay import orchestrator_replay_per_change, replay_costs, replay_figures
from tools.bench_growth import lineage_query_growth, sweep_queue_growth, validation_growth


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--changes", type=int, default=100, help="updates in the direct and governed runs")
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--intake", type=int, default=200, help="requests in the intake and no-op runs")
    parser.add_argument("--cpu-changes", type=int, default=300)
    parser.add_argument("--memory-changes", type=int, default=1000, help="further governed changes for memory")
    parser.add_argument("--lineage-sizes", default="10,100,1000,10000")
    parser.add_argument("--sweep-sizes", default="1000,10000", help="changes in the table for the sweeper figures")
    parser.add_argument("--instances", type=int, default=1, help="runtime instances of the measured gateway")
    parser.add_argument(
        "--scale-out", type=int, default=2, help="also governed changes/s on this many instances (0: skip)"
    )
    parser.add_argument("--callers", type=int, default=6, help="callers in the client-side throughput runs")
    parser.add_argument("--latency-changes", type=int, default=40, help="changes in the one-caller latency run")
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
        "instances": args.instances,
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
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir, local_stack(Path(tmpdir), args.instances) as stack:
        gw, fhir, token, groups = stack["gw"], stack["fhir"], stack["token"], stack["groups"]
        print(f"services and gateway up ({time.perf_counter() - started:.0f} s); seeding...", flush=True)
        tables = table_service(stack["azurite"].connection_string)
        result["cpuTables"] = in_process(args.cpu_changes, warmup=50, tables=tables)
        direct_ids = [f"bd-{uuid.uuid4().hex[:10]}" for _ in range(n)]
        gov_ids = [f"bg-{uuid.uuid4().hex[:10]}" for _ in range(n + 10)]
        scale_ids = [f"bs-{uuid.uuid4().hex[:10]}" for _ in range((n + 10) if args.scale_out else 0)]
        intake_ids = [f"bi-{uuid.uuid4().hex[:10]}" for _ in range(args.intake)]
        runs = 1 + (1 if args.scale_out else 0)
        client_ids = [[f"bc-{uuid.uuid4().hex[:10]}" for _ in range(2 * n + args.latency_changes)] for _ in range(runs)]
        trip_ids = [f"bt-{uuid.uuid4().hex[:10]}" for _ in range(6)]
        seed(fhir.base_url, token, direct_ids + gov_ids + intake_ids + scale_ids + trip_ids, c)
        seed(fhir.base_url, token, [i for ids in client_ids for i in ids], c)
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
        print("as a client sees it (Prefer: wait)...", flush=True)
        result["client"] = [client_figures(gw, fhir.base_url, token, client_ids[0], n, args)]
        if args.scale_out:
            print(f"governed changes on {args.scale_out} instances...", flush=True)
            with stack["another_gateway"](args.scale_out) as (gw_n, state_n):
                governed_changes(gw_n, state_n, scale_ids[n:], 2, timeout=60)
                scaled = governed_changes(gw_n, state_n, scale_ids[:n], c, timeout=150)
                result["client"].append(client_figures(gw_n, fhir.base_url, token, client_ids[1], n, args))
            result["scaleOut"] = {"instances": args.scale_out, "rate": scaled["rate"], "outcomes": scaled["outcomes"]}
        print("Table round trips across processes...", flush=True)
        result["roundTrips"] = round_trips(stack, trip_ids)
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


def client_figures(gw: Any, fhir_base: str, token: str, ids: list[str], n: int, args: Any) -> dict[str, Any]:
    """One caller on the idle gateway first, then ``--callers`` callers: governed with Prefer: wait, then direct."""
    latency = one_caller_latency(gw, fhir_base, token, ids[2 * n :])
    throughput = client_throughput(gw, fhir_base, token, ids[:n], ids[n : 2 * n], args.callers)
    return {"instances": gw.instances, **throughput, "latency": latency}


if __name__ == "__main__":
    main()
