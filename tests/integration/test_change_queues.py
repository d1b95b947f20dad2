"""The Table adapter's queue index on Azurite: listing a review or exception queue reads the ``<prefix>queues``
table, skips rows whose change has moved on, and deletes them once they are old (a young one may belong to a
transition under way)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters import table_change_store
from shared.adapters.table_change_store import TableChangeStore
from shared.core.change_ids import new_change_id
from shared.core.models import ChangeStatus
from tests.contract.test_storage_contract import change_record, event

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_queue_rows_left_behind_are_skipped_then_deleted_once_old(azurite, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    prefix = "t" + uuid.uuid4().hex[:10]
    store = TableChangeStore(tables, prefix=prefix)
    store.ensure_tables()
    queues = tables.get_table_client(f"{prefix}queues")

    def rows() -> list[str]:
        return sorted(e["RowKey"] for e in queues.query_entities("PartitionKey eq 'failed'"))

    kept, moved = new_change_id(NOW), new_change_id(NOW + timedelta(seconds=1))
    for cid in (kept, moved):
        created = store.create(change_record(cid), event(cid, 1))
        store.transition(created.model_copy(update={"status": ChangeStatus.FAILED}), event(cid, 2, ChangeStatus.FAILED))
    retried = store.get(moved)
    assert retried is not None
    store.transition(retried.model_copy(update={"status": ChangeStatus.ACCEPTED}), event(moved, 3))
    assert rows() == sorted([kept, moved])

    assert [r.change_id for r in store.query(status=ChangeStatus.FAILED).items] == [kept]
    assert rows() == sorted([kept, moved]), "a young row left behind is kept"

    monkeypatch.setattr(table_change_store, "STALE_QUEUE_ROW_AGE", timedelta(0))
    assert [r.change_id for r in store.query(status=ChangeStatus.FAILED).items] == [kept]
    assert rows() == [kept]
