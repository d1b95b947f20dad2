"""Replay cost of the local runtime's Durable engine, and its growth with history length.

Two figures per history length (number of episodes already in the history):
- ``sdk replay``: one episode through ``devhost.durable.replay.replay_episode`` (the real SDK replaying the whole
  history, its answer decoded), median;
- ``engine episode``: one whole episode of the engine (SQLite read, replay, action check, commit), median.
Prints a table; ``--json FILE`` writes the figures too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devhost.app_index import load_app
from devhost.durable.engine import DurableEngine
from devhost.durable.history import EventType, dumps, event
from devhost.durable.replay import OrchestratorHandler, episode_context, replay_episode

APP_DIR = Path(__file__).parent / "bench_app"
LENGTHS = (1, 5, 10, 20, 50)


def synthetic_history(episodes: int) -> list[dict[str, Any]]:
    """The history of ``bench_chain`` after ``episodes`` episodes: each one completed one activity."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    history = [
        event(EventType.ORCHESTRATOR_STARTED, at),
        event(EventType.EXECUTION_STARTED, at, Name="bench_chain", Version="", Input="1000"),
    ]
    for i in range(episodes):
        history.append(event(EventType.TASK_SCHEDULED, at, i, Name="bench_step"))
        history.append(event(EventType.ORCHESTRATOR_COMPLETED, at))
        history.append(event(EventType.ORCHESTRATOR_STARTED, at))
        history.append(event(EventType.TASK_COMPLETED, at, TaskScheduledId=i, Result=str(i + 1)))
    for e in history[:-2]:
        e["IsPlayed"] = True
    return history


def sdk_replay_ms(handler: OrchestratorHandler, episodes: int, repeats: int) -> float:
    """Median ms of one episode replaying a history of ``episodes`` earlier episodes (``replay_episode``; the
    context is encoded once, outside the timing)."""
    history = synthetic_history(episodes)
    context = dumps(episode_context(history[:-2], history[-2:], "1000", "bench"))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = replay_episode(handler, context)
        samples.append((time.perf_counter() - start) * 1000)
    if result.error is not None or len(result.actions) != episodes + 1:
        raise RuntimeError(f"bench_chain did not replay {episodes} episodes: {result}")
    return statistics.median(samples)


def engine_episode_ms(max_episodes: int) -> dict[int, float]:
    """Drive one instance step by step (no worker threads) and time each episode."""
    index = load_app("replay_app", APP_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        engine = DurableEngine(index, Path(tmp) / "bench.db")
        iid = engine.start_instance("bench_chain", "bench", json.dumps(max_episodes))
        timings: dict[int, float] = {}
        for episode in range(max_episodes + 1):
            start = time.perf_counter()
            engine.run_episode(iid)
            timings[episode] = (time.perf_counter() - start) * 1000
            if not engine.run_next_activity():
                break
        assert engine.status(iid)["runtimeStatus"] == "Completed"  # type: ignore[index]
        engine.store.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    index = load_app("replay_app", APP_DIR)
    handler = index.functions["bench_chain"].func
    sdk_replay_ms(handler, 5, 20)  # warm-up
    sdk = {n: sdk_replay_ms(handler, n, args.repeats) for n in LENGTHS}
    runs = [engine_episode_ms(max(LENGTHS)) for _ in range(5)]
    engine = {n: statistics.median(run[n] for run in runs) for n in LENGTHS}
    print(f"{'episodes in history':>20} {'sdk replay (ms)':>16} {'per episode (ms)':>17} {'engine episode (ms)':>20}")
    for n in LENGTHS:
        print(f"{n:>20} {sdk[n]:>16.3f} {sdk[n] / n:>17.4f} {engine[n]:>20.3f}")
    print(f"growth 5 -> 50 episodes: sdk replay x{sdk[50] / sdk[5]:.1f}, engine episode x{engine[50] / engine[5]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"sdkReplayMs": sdk, "engineEpisodeMs": engine}, indent=2))


if __name__ == "__main__":
    main()
