"""The local runtime's ``durable.db``, read-only from the benchmark's process: which orchestrations finished, how
many activities and episodes a change took, and the histories the run left (for the SDK replay figures)."""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FINISHED_SQL = "SELECT instance_id FROM instances WHERE status IN ('Completed', 'Failed', 'Terminated', 'Canceled')"


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


def instance_history(con: sqlite3.Connection, instance_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """An instance's recorded history events, in order, and its input (JSON text)."""
    events = [
        json.loads(e)
        for (e,) in con.execute("SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (instance_id,))
    ]
    (raw_input,) = con.execute("SELECT input FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
    return events, raw_input
