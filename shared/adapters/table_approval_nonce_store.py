"""ApprovalNonceStore on Azure Table Storage: one row per used nonce (partition = nonce, empty row key).

The insert that fails if the row exists is the atomic decision that a link is used once. The key is the nonce
alone, so a used nonce is refused whichever change it comes with; the change id is kept as a property.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient

from shared.adapters.storage_edge import storage_adapter
from shared.adapters.storage_errors import storage_error
from shared.adapters.table_codec import escape_key
from shared.adapters.table_maintenance import ensure_table, purge_expired_rows


@storage_adapter("ensure_tables")
class TableApprovalNonceStore:
    def __init__(self, service: TableServiceClient, *, prefix: str = "writeback") -> None:
        self._table: TableClient = service.get_table_client(f"{prefix}approvalnonces")

    def ensure_tables(self) -> None:
        ensure_table(self._table)

    def use(self, nonce: str, change_id: str, expires_at: datetime) -> None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        entity: dict[str, Any] = {
            "PartitionKey": escape_key(nonce),
            "RowKey": "",
            "ChangeId": change_id,
            "ExpiresAt": expires_at,
        }
        try:
            self._table.create_entity(entity)
        except HttpResponseError as exc:
            mapped = storage_error(exc, "approval link nonce")
            raise (exc if mapped is exc else mapped) from exc

    def purge_expired(self, now: datetime) -> int:
        return purge_expired_rows(self._table, now)
