"""The benchmarks against the bars of DESIGN.md §11 (``python -m tools.bench``, ``make bench``).

- ``__main__``: the command line; runs everything in order and writes ``docs/benchmarks.md`` / ``.json``;
- ``fixtures``: request bodies, the caller, the services wired in-process, the local services and gateway;
- ``http_runs``: the runs over HTTP against the local stack (direct writes, governed changes, intake, memory);
- ``in_process_runs``: the pipeline steps in-process, over the fakes or the real Table adapters on Azurite;
- ``sdk_replay``: the SDK's replay of orchestrator histories, through ``devhost.durable.replay``;
- ``durable_db``: the runtime's ``durable.db``, read-only (finished instances, history counts, histories);
- ``cpu_sampling``: CPU and memory of processes from ``/proc``, and the stack sampler that splits in-process CPU;
- ``report``: the ratios against the bars, the markdown and JSON report.
"""
