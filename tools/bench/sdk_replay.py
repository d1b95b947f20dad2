"""The SDK's replay of orchestrator histories, through the local runtime's public replay API
(``devhost.durable.replay``): the real ``writeback_orchestrator`` over the histories governed changes left in
``durable.db``, and ``tools/bench_app``'s synthetic chain as the history grows."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from devhost.durable.replay import episode_context, replay_episode
from tools.bench.durable_db import durable_db, instance_history
from tools.services.process import REPO_ROOT

INBOX_EVENTS = {0, 3, 5, 6, 8, 9, 11, 15}  # what an episode receives; the rest are what it recorded


def episode_contexts(events: list[dict[str, Any]], instance_id: str, orchestration_input: str | None) -> list[str]:
    """The context JSON each episode of a finished instance was given: the history so far (played) plus the
    episode's OrchestratorStarted and the events it received, built as the local runtime's engine builds it."""
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
            events, raw_input = instance_history(con, cid)
            contexts = episode_contexts(events, cid, raw_input)
            for context in contexts:  # warm-up, and each episode must replay as it ran
                replayed = replay_episode(handler, context)
                if replayed.error is not None:
                    raise RuntimeError(f"replay of {cid} failed: {replayed.error}")
            start = time.process_time()
            for _ in range(repeats):
                for context in contexts:
                    replay_episode(handler, context)
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
