"""ChangeStore on Azure Table Storage.

One partition per change: the ``record`` row and one insert-only row per lineage event (``event-0000000001``...),
so a transition (record replace with If-Match + new event) is one entity-group transaction. A second table indexes
changes by resource, newest first.

A third table indexes the review and exception queues (``awaiting_approval``, ``conflict``, ``failed``, ``expired``,
and completed changes whose read-back drifted), so that listing them reads those changes, not the whole table. The
index row is written just before the transition that enters the status (an extra round trip only off the happy
path); a row whose change has moved on is skipped when read, and deleted once it is older than a few minutes (a young
one may belong to a transition under way).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from shared.adapters.storage_edge import storage_adapter
from shared.adapters.storage_errors import storage_error
from shared.adapters.table_codec import (
    decode_token,
    encode_token,
    escape_key,
    odata_quote,
    pack_json,
    unpack_json,
)
from shared.adapters.table_maintenance import MAX_BATCH, ensure_table, entity_or_none
from shared.adapters.table_transactions import submit_transaction
from shared.core.models import ChangeRecord, ChangeStatus, LineageEvent, Page, ResourceChange

RECORD_ROW = "record"
EVENT_ROW_PREFIX = "event-"
MAX_PAGE_SIZE = 1000
# Filtered cross-partition queries may return empty pages with a token; read a few before giving back a page.
MAX_EMPTY_PAGES = 20
_EPOCH_MS_CEILING = 10**13
QUEUE_STATUSES = frozenset(
    {ChangeStatus.AWAITING_APPROVAL, ChangeStatus.CONFLICT, ChangeStatus.FAILED, ChangeStatus.EXPIRED}
)
DRIFTED_QUEUE = "drifted"
STALE_QUEUE_ROW_AGE = timedelta(minutes=5)


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
        **({"Verified": record.result.verified} if record.result and record.result.verified is not None else {}),
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


def queues_of(record: ChangeRecord) -> list[str]:
    """The queue index partitions a record in this state belongs to."""
    queues = [record.status.value] if record.status in QUEUE_STATUSES else []
    if record.status is ChangeStatus.COMPLETED and record.result and record.result.verified is False:
        queues.append(DRIFTED_QUEUE)
    return queues


def queue_for(status: ChangeStatus | None, verified: bool | None) -> str | None:
    """The queue index partition that holds every record matching these filters, if one does."""
    if status is not None and status in QUEUE_STATUSES:
        return status.value
    if verified is False and status in (None, ChangeStatus.COMPLETED):
        return DRIFTED_QUEUE
    return None


def record_matches(
    record: ChangeRecord,
    *,
    status: ChangeStatus | None = None,
    target: str | None = None,
    resource_type: str | None = None,
    verified: bool | None = None,
    change_ids: tuple[str, str] | None = None,
) -> bool:
    """The filters of ``ChangeStore.query``, applied to one record."""
    if status is not None and record.status is not status:
        return False
    if target is not None and record.target != target:
        return False
    if resource_type is not None and record.resource_type != resource_type:
        return False
    if verified is not None and (record.result is None or record.result.verified is not verified):
        return False
    return change_ids is None or change_ids[0] <= record.change_id < change_ids[1]


def record_from_entity(entity: Any) -> ChangeRecord:
    record = ChangeRecord.model_validate(unpack_json(entity))
    record.etag = entity.metadata.get("etag")
    return record


@storage_adapter("ensure_tables")
class TableChangeStore:
    def __init__(self, service: TableServiceClient, *, prefix: str = "writeback") -> None:
        self._changes: TableClient = service.get_table_client(f"{prefix}changes")
        self._resources: TableClient = service.get_table_client(f"{prefix}resources")
        self._queues: TableClient = service.get_table_client(f"{prefix}queues")

    def ensure_tables(self) -> None:
        for table in (self._changes, self._resources, self._queues):
            ensure_table(table)

    def create(self, record: ChangeRecord, event: LineageEvent) -> ChangeRecord:
        self._enter_queues(record)
        ops: list[Any] = [("create", record_entity(record)), ("create", event_entity(event))]
        result = self._submit(ops, f"change {record.change_id}")
        return record.model_copy(update={"etag": result[0].get("etag")})

    def transition(self, record: ChangeRecord, *events: LineageEvent) -> ChangeRecord:
        if record.etag is None:
            raise ValueError("transition needs the record's etag (read it first)")
        if len(events) + 1 > MAX_BATCH:
            raise ValueError(f"a transition holds at most {MAX_BATCH - 1} lineage events")
        self._enter_queues(record)
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

    def _enter_queues(self, record: ChangeRecord) -> None:
        for queue in queues_of(record):
            row = {
                "PartitionKey": queue,
                "RowKey": record.change_id,
                "Target": record.target,
                "ResourceType": record.resource_type,
                "IndexedAt": datetime.now(UTC),
            }
            self._queues.upsert_entity(row, mode=UpdateMode.REPLACE)

    def _submit(self, ops: list[Any], what: str) -> list[Mapping[str, Any]]:
        try:
            return submit_transaction(self._changes, ops)
        except HttpResponseError as exc:
            mapped = storage_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc

    def get(self, change_id: str) -> ChangeRecord | None:
        entity = entity_or_none(self._changes, change_id, RECORD_ROW)
        return record_from_entity(entity) if entity is not None else None

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
        filters: dict[str, Any] = {
            "status": status,
            "target": target,
            "resource_type": resource_type,
            "verified": verified,
            "change_ids": change_ids,
        }
        queue = queue_for(status, verified)
        key = "RowKey" if queue is not None else "PartitionKey"
        clauses = [f"PartitionKey eq {odata_quote(queue)}"] if queue is not None else [f"RowKey eq '{RECORD_ROW}'"]
        if change_ids is not None:
            # Key bounds first: the service reads only the keys in the range.
            low, high = change_ids
            clauses[:0] = [f"{key} ge {odata_quote(low)}", f"{key} lt {odata_quote(high)}"]
        if queue is None and verified is not None:
            clauses.append(f"Verified eq {'true' if verified else 'false'}")
        if queue is None and status is not None:
            clauses.append(f"Status eq {odata_quote(status.value)}")
        if target is not None:
            clauses.append(f"Target eq {odata_quote(target)}")
        if resource_type is not None:
            clauses.append(f"ResourceType eq {odata_quote(resource_type)}")
        table = self._queues if queue is not None else self._changes
        items, token = self._page(table, " and ".join(clauses), page_size, continuation_token)
        if queue is None:
            return Page[ChangeRecord](items=[record_from_entity(e) for e in items], continuation_token=token)
        records = [r for r in (self._from_queue_row(row) for row in items) if r and record_matches(r, **filters)]
        return Page[ChangeRecord](items=records, continuation_token=token)

    def _from_queue_row(self, row: Any) -> ChangeRecord | None:
        """The record a queue row points at; a row left behind by a change that moved on is deleted once old."""
        record = self.get(row["RowKey"])
        if record is not None and row["PartitionKey"] in queues_of(record):
            return record
        indexed_at = row.get("IndexedAt")
        if isinstance(indexed_at, datetime) and datetime.now(UTC) - indexed_at > STALE_QUEUE_ROW_AGE:
            try:
                self._queues.delete_entity(
                    row["PartitionKey"],
                    row["RowKey"],
                    etag=row.metadata.get("etag"),
                    match_condition=MatchConditions.IfNotModified,
                )
            except HttpResponseError as exc:
                if exc.status_code not in (404, 412):
                    raise
        return None

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
