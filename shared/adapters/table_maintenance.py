"""Table Storage chores shared by the adapters: create a table if absent, purge expired rows in batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient

from shared.adapters.table_transactions import submit_transaction

MAX_BATCH = 100  # Table Storage refuses larger entity-group transactions


def ensure_table(table: TableClient) -> None:
    try:
        table.create_table()
    except HttpResponseError as exc:
        if exc.status_code != 409:
            raise


def purge_expired_rows(table: TableClient, now: datetime) -> int:
    """Delete rows whose ``ExpiresAt`` is before ``now``: one transaction per partition and per 100 rows."""
    expired = table.query_entities("ExpiresAt lt @now", parameters={"now": now}, select=["PartitionKey", "RowKey"])
    by_partition: dict[str, list[Any]] = {}
    for entity in expired:
        by_partition.setdefault(entity["PartitionKey"], []).append(entity)
    deleted = 0
    for entities in by_partition.values():
        for start in range(0, len(entities), MAX_BATCH):
            batch = entities[start : start + MAX_BATCH]
            submit_transaction(table, [("delete", e) for e in batch])
            deleted += len(batch)
    return deleted
