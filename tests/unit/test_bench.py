"""The benchmark's in-process part and its report, on small numbers (no services): it must run on a fresh clone."""

from __future__ import annotations

from typing import Any

from tools.bench.in_process_runs import in_process
from tools.bench.report import derived, reading, rows


def test_in_process_counts_and_splits_cpu_over_the_fakes() -> None:
    result = in_process(8, warmup=2, sample=True)

    assert result["tableRoundTrips"] == 5  # in one process: the claim, the record, the index, two transitions
    # the CPU inside the fakes is timed at the ports and kept apart from the project's own
    assert 0 < result["outsidePortsMedianMs"] < result["totalMedianMs"]
    assert result["storesMedianMs"] > 0 and result["otherFakesMedianMs"] > 0
    assert result["fakeDownstreamCalls"] <= 3
    assert set(result["stagesMedianMs"]) == {"intake", "dispatch", "prepare and write"}
    assert result["totalMedianMs"] > 0
    assert abs(sum(part["share"] for part in result["split"].values()) - 1) < 1e-9


def _result() -> dict[str, Any]:
    cpu = in_process(4, warmup=1, sample=True)
    latency = {"rate": 100.0, "p50": 2.0, "p95": 4.0}
    return {
        "changes": 10,
        "cores": 2,
        "concurrency": 4,
        "intakeRequests": 10,
        "direct": {"rate": 500.0},
        "governed": {"rate": 20.0, "cpu": {"runtime": 0.5, "Azurite": 0.12, "FHIR server": None}},
        "live": latency,
        "health": latency,
        "openapi": latency,
        "intake": {**latency, "rate": 20.0, "cpu": {"runtime": 0.3}},
        "downstreamPerChange": 2.0,
        "downstreamByMethod": {"GET": 10, "POST": 10},
        "history": {"activities": 2.0, "episodes": 3.0},
        "cpu": cpu,
        "cpuTables": {**cpu, "storesMedianMs": 20.0},
        "replay": {
            "growth": [{"episodes": 1, "medianMs": 0.3, "msPerEpisode": 0.3}],
            "perChangeMs": 1.0,
            "episodesPerChange": 3.0,
        },
        "growth": {"validation": [], "lineage": [], "memory": [{"changes": 0, "rssMb": 100.0}]},
        "client": [
            {
                "instances": 1,
                "callers": 6,
                "governedRate": 40.0,
                "directRate": 500.0,
                "ratio": 0.08,
                "latency": {"governedP50": 90.0, "governedP95": 150.0, "directP50": 2.0, "directP95": 3.0},
            }
        ],
        "roundTrips": {"before202": 2, "perChange": 6, "perChangeMax": 6, "rateLimiterPerChange": 0.0},
    }


def test_report_gives_a_verdict_per_bar_and_explains_the_ratios() -> None:
    result = _result()
    result["derived"] = derived(result)
    table = rows(result)
    verdicts = {name: ok for name, _value, bar, ok in table if bar}

    assert verdicts["Client: governed / direct, 1 instance(s)"] == "**NOT met**"  # 40 / 500
    assert verdicts["Client: one caller, submit → final answer p50 / p95 ms, 1 instance(s)"] == "met"  # 90 ms
    assert verdicts["Intake / no-op"] == "**NOT met**"  # 20 / 100
    assert verdicts["Table round trips before the 202 (recording proxy)"] == "met"
    assert verdicts["Table round trips per change across processes (recording proxy, 2 instances)"] == "**NOT met**"
    assert result["derived"]["storageClientCpuMs"] == 20
    assert result["derived"]["projectCpuMs"] == result["cpu"]["outsidePortsMedianMs"] + 1.0  # + the replay
    assert result["derived"]["cpuMsPerChange"]["runtime"] == 50  # 0.5 CPU-s over 10 changes
    assert round(result["derived"]["governedCeiling"]) == 32  # 2 cores / (50 + 12) ms
    text = "\n".join(reading(result))
    assert "cannot exceed about 32 changes/s" in text
