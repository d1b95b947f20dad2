"""Table transactions through ``shared.adapters.table_transactions`` against Azurite: no thread pool per request,
bodies byte-identical to the SDK's, and the SDK's results and errors unchanged (the changes store's contract tests
cover the domain mapping)."""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.utils._pipeline_transport_rest_shared import _prepare_multipart_body_helper as sdk_body
from azure.data.tables import EdmType, TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_transactions import submit_transaction
from shared.core.models import ChangeStatus
from tests.contract.test_storage_contract import change_record, event

pytestmark = pytest.mark.integration


@pytest.fixture
def table(azurite: Any) -> Iterator[TableClient]:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    client = service.create_table(f"tx{uuid.uuid4().hex[:12]}")
    yield client
    service.delete_table(client.table_name)


@pytest.fixture
def pools_started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts thread pools created in this process while the test runs."""
    created: list[int] = []
    original = concurrent.futures.ThreadPoolExecutor.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        created.append(threading.get_ident())
        original(self, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "__init__", counting_init)
    return created


def test_a_transaction_starts_no_thread_pool_and_returns_each_etag(
    table: TableClient, pools_started: list[int]
) -> None:
    rows = [{"PartitionKey": "p1", "RowKey": f"r{i}", "n": i} for i in range(3)]
    results = submit_transaction(table, [("create", row) for row in rows])

    assert pools_started == []
    assert [bool(r.get("etag")) for r in results] == [True, True, True]
    stored = {e["RowKey"]: e["n"] for e in table.query_entities("PartitionKey eq 'p1'")}
    assert stored == {"r0": 0, "r1": 1, "r2": 2}
    assert table.get_entity("p1", "r0").metadata["etag"] == results[0]["etag"]


def test_a_failing_operation_applies_nothing_and_raises_the_sdk_error(
    table: TableClient, pools_started: list[int]
) -> None:
    first = submit_transaction(table, [("create", {"PartitionKey": "p2", "RowKey": "a", "v": 1})])
    submit_transaction(
        table,
        [("update", {"PartitionKey": "p2", "RowKey": "a", "v": 2}, {"mode": UpdateMode.REPLACE})],
    )

    with pytest.raises(TableTransactionError):  # duplicate create: the whole group is refused
        submit_transaction(
            table,
            [
                ("create", {"PartitionKey": "p2", "RowKey": "b", "v": 1}),
                ("create", {"PartitionKey": "p2", "RowKey": "a", "v": 3}),
            ],
        )
    with pytest.raises(HttpResponseError) as stale:  # an old ETag inside the group: 412, nothing applied
        submit_transaction(
            table,
            [
                ("create", {"PartitionKey": "p2", "RowKey": "c", "v": 1}),
                (
                    "update",
                    {"PartitionKey": "p2", "RowKey": "a", "v": 4},
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": first[0]["etag"],
                        "match_condition": MatchConditions.IfNotModified,
                    },
                ),
            ],
        )
    assert stale.value.status_code == 412
    assert pools_started == []
    assert {e["RowKey"]: e["v"] for e in table.query_entities("PartitionKey eq 'p2'")} == {"a": 2}


class ComparingTransport(RequestsTransport):
    """Sends as usual, after checking that each ``$batch`` body equals what azure-core's ``email`` path builds."""

    batches = 0

    def send(self, request: Any, **kwargs: Any) -> Any:
        if request.multipart_mixed_info:
            ours = request.body
            sdk_body(request, 0)  # rebuilds the body from the same, already prepared, parts
            assert ours == request.body
            ComparingTransport.batches += 1
        return super().send(request, **kwargs)


def test_every_batch_the_adapters_send_is_byte_identical_to_the_sdk(azurite: Any) -> None:
    service = TableServiceClient.from_connection_string(azurite.connection_string, transport=ComparingTransport())
    before = ComparingTransport.batches
    store = TableChangeStore(service, prefix=f"cmp{uuid.uuid4().hex[:8]}")
    store.ensure_tables()
    record = change_record("c-1", plan={"changedPaths": ["Patient.telecom"], "note": 'é \n "quoted" 漢字'})
    created = store.create(record, event("c-1", 1))
    moved = store.transition(
        created.model_copy(update={"status": ChangeStatus.VALIDATING, "sequence": 3}),
        event("c-1", 2, ChangeStatus.VALIDATING),
        event("c-1", 3, ChangeStatus.VALIDATING),
    )
    assert store.get("c-1") == moved
    table = service.create_table(f"cmp{uuid.uuid4().hex[:8]}")
    rows = [
        {"PartitionKey": "p", "RowKey": f"r{i}", "n": i, "blob": b"\x00\xff", "big": (2**40, EdmType.INT64)}
        for i in range(100)
    ]
    submit_transaction(table, [("upsert", row) for row in rows])
    submit_transaction(table, [("update", rows[0], {"mode": UpdateMode.MERGE}), ("delete", rows[1])])
    assert ComparingTransport.batches - before == 4
