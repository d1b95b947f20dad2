"""ChangeStore on Azure Table Storage.

One partition per change: the ``record`` row and one insert-only row per lineage event (``event-0000000001``...),
so a transition (record replace with If-Match + new event) is one entity-group transaction. A second table indexes
changes by resource, newest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from shared.adapters.storage_errors import storage_error
from shared.adapters.table_codec import (
    decode_token,
    encode_token,
    escape_key,
    odata_quote,
    pack_json,
    unpack_json,
)
from shared.adapters.table_maintenance import MAX_BATCH, ensure_table
from shared.adapters.table_transactions import submit_transaction
from shared.models import ChangeRecord, ChangeStatus, LineageEvent, Page, ResourceChange

RECORD_ROW = "record"
EVENT_ROW_PREFIX = "event-"
MAX_PAGE_SIZE = 1000
# Filtered cross-partition queries may return empty pages with a token; read a few before giving back a page.
MAX_EMPTY_PAGES = 20
_EPOCH_MS_CEILING = 10**13


def event_row_key(sequence: int) -> str:
    return f"{EVENT_ROW_PREFIX}{sequence:010d}"


def resource_partition(target: str, resource_type: str, resource_id: str) -> str:
    return escape_key(f"{target}|{resource_type}|{resource_id}")


def newest_first_key(at: datetime, change_id: str) -> str:
    millis = int(at.timestamp() * 1000)
    return f"{_EPOCH_MS_CEILING - 1 - millis:013d}-{change_id}"


def record_entity(record: ChangeRecord) -> dict[str, Any]:
    return {
        "PartitionKey": record.change_id,
        "RowKey": RECORD_ROW,
        "Status": record.status.value,
        "Target": record.target,
        "ResourceType": record.resource_type,
        "SubmittedAt": record.submitted_at,
        "UpdatedAt": record.updated_at,
        **({"Verified": bool(record.result["verified"])} if record.result and "verified" in record.result else {}),
        **pack_json(record.model_dump(mode="json", by_alias=True, exclude_none=True)),
    }


def event_entity(event: LineageEvent) -> dict[str, Any]:
    return {
        "PartitionKey": event.change_id,
        "RowKey": event_row_key(event.sequence),
        "Event": event.event,
        "Status": event.status.value,
        "At": event.at,
        **pack_json(event.model_dump(mode="json", by_alias=True, exclude_none=True)),
    }


def record_from_entity(entity: Any) -> ChangeRecord:
    record = ChangeRecord.model_validate(unpack_json(entity))
    record.etag = entity.metadata.get("etag")
    return record


class TableChangeStore:
    def __init__(self, service: TableServiceClient, *, prefix: str = "writeback") -> None:
        self._changes: TableClient = service.get_table_client(f"{prefix}changes")
        self._resources: TableClient = service.get_table_client(f"{prefix}resources")

    def ensure_tables(self) -> None:
        for table in (self._changes, self._resources):
            ensure_table(table)

    def create(self, record: ChangeRecord, event: LineageEvent) -> ChangeRecord:
        ops: list[Any] = [("create", record_entity(record)), ("create", event_entity(event))]
        result = self._submit(ops, f"change {record.change_id}")
        return record.model_copy(update={"etag": result[0].get("etag")})

    def transition(self, record: ChangeRecord, *events: LineageEvent) -> ChangeRecord:
        if record.etag is None:
            raise ValueError("transition needs the record's etag (read it first)")
        if len(events) + 1 > MAX_BATCH:
            raise ValueError(f"a transition holds at most {MAX_BATCH - 1} lineage events")
        ops: list[Any] = [
            (
                "update",
                record_entity(record),
                {"mode": UpdateMode.REPLACE, "etag": record.etag, "match_condition": MatchConditions.IfNotModified},
            ),
            *[("create", event_entity(event)) for event in events],
        ]
        result = self._submit(ops, f"change {record.change_id}")
        return record.model_copy(update={"etag": result[0].get("etag")})

    def _submit(self, ops: list[Any], what: str) -> list[Mapping[str, Any]]:
        try:
            return submit_transaction(self._changes, ops)
        except HttpResponseError as exc:
            mapped = storage_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc

    def get(self, change_id: str) -> ChangeRecord | None:
        try:
            entity = self._changes.get_entity(change_id, RECORD_ROW)
        except HttpResponseError as exc:
            if exc.status_code == 404:
                return None
            raise
        return record_from_entity(entity)

    def lineage(self, change_id: str) -> list[LineageEvent]:
        query = (
            f"PartitionKey eq {odata_quote(change_id)} and RowKey ge '{EVENT_ROW_PREFIX}' "
            f"and RowKey lt '{EVENT_ROW_PREFIX[:-1]}.'"
        )
        events = [LineageEvent.model_validate(unpack_json(e)) for e in self._changes.query_entities(query)]
        return sorted(events, key=lambda e: e.sequence)

    def query(
        self,
        *,
        status: ChangeStatus | None = None,
        target: str | None = None,
        resource_type: str | None = None,
        verified: bool | None = None,
        change_ids: tuple[str, str] | None = None,
        page_size: int = 50,
        continuation_token: str | None = None,
    ) -> Page[ChangeRecord]:
        clauses = [f"RowKey eq '{RECORD_ROW}'"]
        if change_ids is not None:
            low, high = change_ids
            # PartitionKey bounds first: the service reads only the partitions in the range.
            clauses[:0] = [f"PartitionKey ge {odata_quote(low)}", f"PartitionKey lt {odata_quote(high)}"]
        if verified is not None:
            clauses.append(f"Verified eq {'true' if verified else 'false'}")
        if status is not None:
            clauses.append(f"Status eq {odata_quote(status.value)}")
        if target is not None:
            clauses.append(f"Target eq {odata_quote(target)}")
        if resource_type is not None:
            clauses.append(f"ResourceType eq {odata_quote(resource_type)}")
        items, token = self._page(self._changes, " and ".join(clauses), page_size, continuation_token)
        return Page[ChangeRecord](items=[record_from_entity(e) for e in items], continuation_token=token)

    def index_resource(self, entry: ResourceChange) -> None:
        entity = {
            "PartitionKey": resource_partition(entry.target, entry.resource_type, entry.resource_id),
            "RowKey": newest_first_key(entry.at, entry.change_id),
            "ChangeId": entry.change_id,
            **pack_json(entry.model_dump(mode="json", by_alias=True)),
        }
        self._resources.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def resource_history(
        self,
        target: str,
        resource_type: str,
        resource_id: str,
        *,
        page_size: int = 50,
        continuation_token: str | None = None,
    ) -> Page[ResourceChange]:
        query = f"PartitionKey eq {odata_quote(resource_partition(target, resource_type, resource_id))}"
        items, token = self._page(self._resources, query, page_size, continuation_token)
        return Page[ResourceChange](
            items=[ResourceChange.model_validate(unpack_json(e)) for e in items], continuation_token=token
        )

    @staticmethod
    def _page(
        table: TableClient, query: str, page_size: int, continuation_token: str | None
    ) -> tuple[list[Any], str | None]:
        size = max(1, min(page_size, MAX_PAGE_SIZE))
        token = decode_token(continuation_token)
        for _ in range(MAX_EMPTY_PAGES):
            # The SDK's continuation token is a dict, though its stubs say str.
            pager = table.query_entities(query, results_per_page=size).by_page(continuation_token=token)  # type: ignore[arg-type]
            items = list(next(pager, []))
            token = getattr(pager, "continuation_token", None)
            if items or not token:
                return items, encode_token(token)
        return [], encode_token(token)
