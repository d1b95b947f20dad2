"""IdempotencyStore on Azure Table Storage: one row per (caller, key); the insert is the atomic claim."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from shared.adapters.storage_edge import storage_adapter
from shared.adapters.storage_errors import storage_error
from shared.adapters.table_codec import escape_key, pack_json, unpack_json
from shared.adapters.table_maintenance import ensure_table, entity_or_none, purge_expired_rows
from shared.core.models import IdempotencyRecord


def _entity(record: IdempotencyRecord) -> dict[str, Any]:
    return {
        "PartitionKey": escape_key(record.caller),
        "RowKey": escape_key(record.key),
        "ChangeId": record.change_id,
        "State": record.state.value,
        "ExpiresAt": record.expires_at,
        **pack_json(record.model_dump(mode="json", by_alias=True, exclude_none=True)),
    }


def _record(entity: Any) -> IdempotencyRecord:
    record = IdempotencyRecord.model_validate(unpack_json(entity))
    record.etag = entity.metadata.get("etag")
    return record


@storage_adapter("ensure_tables")
class TableIdempotencyStore:
    def __init__(self, service: TableServiceClient, *, prefix: str = "writeback") -> None:
        self._table: TableClient = service.get_table_client(f"{prefix}idempotency")

    def ensure_tables(self) -> None:
        ensure_table(self._table)

    def claim(self, record: IdempotencyRecord) -> IdempotencyRecord:
        try:
            meta = self._table.create_entity(_entity(record))
        except HttpResponseError as exc:
            raise _mapped(exc, "idempotency key") from exc
        return record.model_copy(update={"etag": meta.get("etag")})

    def get(self, caller: str, key: str) -> IdempotencyRecord | None:
        entity = entity_or_none(self._table, escape_key(caller), escape_key(key))
        return _record(entity) if entity is not None else None

    def update(self, record: IdempotencyRecord) -> IdempotencyRecord:
        if record.etag is None:
            raise ValueError("update needs the record's etag (read it first)")
        try:
            meta = self._table.update_entity(
                _entity(record),
                mode=UpdateMode.REPLACE,
                etag=record.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except HttpResponseError as exc:
            raise _mapped(exc, "idempotency key") from exc
        return record.model_copy(update={"etag": meta.get("etag")})

    def delete(self, caller: str, key: str) -> None:
        self._table.delete_entity(escape_key(caller), escape_key(key))

    def purge_expired(self, now: datetime) -> int:
        return purge_expired_rows(self._table, now)


def _mapped(exc: HttpResponseError, what: str) -> Exception:
    mapped = storage_error(exc, what)
    return exc if mapped is exc else mapped
