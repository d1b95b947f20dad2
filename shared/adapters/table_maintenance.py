"""Table Storage chores shared by the adapters: create a table if absent, read an entity that may be absent, write
one only if it is as read (or still absent), purge expired rows in batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError
from azure.data.tables import TableClient, TableEntity, UpdateMode

from shared.adapters.table_transactions import submit_transaction

MAX_BATCH = 100  # Table Storage refuses larger entity-group transactions


def ensure_table(table: TableClient) -> None:
    try:
        table.create_table()
    except HttpResponseError as exc:
        if exc.status_code != 409:
            raise


def entity_or_none(table: TableClient, partition: str, row: str) -> TableEntity | None:
    """The entity, or None when there is none (404)."""
    try:
        return table.get_entity(partition, row)
    except HttpResponseError as exc:
        if exc.status_code == 404:
            return None
        raise


def write_if_unchanged(table: TableClient, entity: dict[str, Any], etag: str | None) -> str | None:
    """Store ``entity`` if it is still at ``etag`` (still absent when None): its new ETag, or None when another
    writer got there first (409 on the insert, 412 on the conditional replace)."""
    try:
        if etag is None:
            meta = table.create_entity(entity)
        else:
            meta = table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
    except (ResourceExistsError, ResourceModifiedError):
        return None
    except HttpResponseError as exc:
        if exc.status_code in (409, 412):
            return None
        raise
    return str(meta.get("etag") or "")


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
