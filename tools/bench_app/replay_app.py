"""A benchmark app: one orchestrator calling a trivial activity N times in sequence."""

from __future__ import annotations

import azure.durable_functions as df

app = df.DFApp()


@app.activity_trigger(input_name="n")
def bench_step(n: int) -> int:
    return n + 1


@app.orchestration_trigger(context_name="context")
def bench_chain(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    value = 0
    for _ in range(context.get_input()):
        value = yield context.call_activity(bench_step, value)
    return value
