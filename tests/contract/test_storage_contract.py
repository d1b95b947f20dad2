"""One contract suite for the storage ports, run against the in-memory fakes and against Azurite."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.adapters.blob_payload_store import BlobPayloadStore
from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_idempotency_store import TableIdempotencyStore
from shared.core.change_ids import change_id_floor, new_change_id
from shared.core.errors import AlreadyExistsError, ConcurrencyError, NotFoundError, RequestError
from shared.core.models import (
    ChangeRecord,
    ChangeStatus,
    IdempotencyRecord,
    IdempotencyState,
    LineageEvent,
    Operation,
    PayloadRef,
    Principal,
    ResourceChange,
)
from shared.core.ports import ChangeStore, IdempotencyStore, PayloadStore
from shared.core.record_parts import ChangeResult
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore
from tests.contract.tables import FAKE_OR_AZURITE

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
INLINE_MAX = 1000


@dataclass
class Stores:
    idempotency: IdempotencyStore
    changes: ChangeStore
    payloads: PayloadStore


@pytest.fixture(params=FAKE_OR_AZURITE)
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    if request.param == "fake":
        yield Stores(FakeIdempotencyStore(), FakeChangeStore(), FakePayloadStore(inline_max_bytes=INLINE_MAX))
        return
    azurite = request.getfixturevalue("azurite")
    prefix = "t" + uuid.uuid4().hex[:10]
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    idem = TableIdempotencyStore(tables, prefix=prefix)
    changes = TableChangeStore(tables, prefix=prefix)
    payloads = BlobPayloadStore(blobs, prefix, inline_max_bytes=INLINE_MAX)
    idem.ensure_tables()
    changes.ensure_tables()
    payloads.ensure_container()
    yield Stores(idem, changes, payloads)


def idem_record(caller: str = "app-1|", key: str = "key-1", *, expires: datetime | None = None) -> IdempotencyRecord:
    return IdempotencyRecord(
        caller=caller,
        key=key,
        fingerprint="f" * 64,
        change_id=str(uuid.uuid4()),
        created_at=NOW,
        expires_at=expires or NOW + timedelta(hours=72),
    )


def change_record(change_id: str | None = None, **overrides: object) -> ChangeRecord:
    values: dict[str, object] = {
        "change_id": change_id or str(uuid.uuid4()),
        "status": ChangeStatus.ACCEPTED,
        "target": "local-ehr",
        "operation": Operation.UPDATE,
        "resource_type": "Patient",
        "resource_id": "p1",
        "requested_by": Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"]),
        "submitted_at": NOW,
        "updated_at": NOW,
        "request_hash": "a" * 64,
        "payload": PayloadRef(kind="inline", sha256="b" * 64, size=2, inline="{}"),
    }
    values.update(overrides)
    return ChangeRecord.model_validate(values)


def event(change_id: str, sequence: int, status: ChangeStatus = ChangeStatus.ACCEPTED) -> LineageEvent:
    return LineageEvent(
        change_id=change_id,
        sequence=sequence,
        event=status.value,
        status=status,
        at=NOW + timedelta(seconds=sequence),
        actor="gateway",
        details={"paths": ["Patient.telecom"]},
    )


# --- idempotency -------------------------------------------------------------------------------------


def test_claim_is_atomic_insert_if_absent(stores: Stores) -> None:
    first = stores.idempotency.claim(idem_record())
    assert first.etag
    with pytest.raises(AlreadyExistsError):
        stores.idempotency.claim(idem_record())
    stored = stores.idempotency.get("app-1|", "key-1")
    assert stored is not None and stored.change_id == first.change_id


def test_concurrent_claims_have_exactly_one_winner(stores: Stores) -> None:
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        rec = idem_record(key="race")
        barrier.wait()
        try:
            stores.idempotency.claim(rec)
            winners.append(rec.change_id)
        except AlreadyExistsError:
            losers.append(rec.change_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    stored = stores.idempotency.get("app-1|", "race")
    assert stored is not None and stored.change_id == winners[0]


def test_keys_are_scoped_by_caller(stores: Stores) -> None:
    stores.idempotency.claim(idem_record(caller="app-1|"))
    stores.idempotency.claim(idem_record(caller="app-2|"))
    a, b = stores.idempotency.get("app-1|", "key-1"), stores.idempotency.get("app-2|", "key-1")
    assert a is not None and b is not None and a.change_id != b.change_id


@pytest.mark.parametrize(
    "key", ["a/b", "a\\b", "a#b", "a?b", "tab\there", "nul\x00x", "del\x7fx", "pct%2F", "~!@$&*()"]
)
def test_unsafe_key_characters_round_trip(stores: Stores, key: str) -> None:
    stores.idempotency.claim(idem_record(caller="app/x#1|u?\\", key=key))
    stored = stores.idempotency.get("app/x#1|u?\\", key)
    assert stored is not None and stored.key == key and stored.caller == "app/x#1|u?\\"
    assert stores.idempotency.get("app/x#1|u?\\", key + "x") is None


def test_idempotency_update_checks_etag(stores: Stores) -> None:
    claimed = stores.idempotency.claim(idem_record())
    done = stores.idempotency.update(
        claimed.model_copy(update={"state": IdempotencyState.COMPLETED, "response_status": 202})
    )
    assert done.etag != claimed.etag
    with pytest.raises(ConcurrencyError):
        stores.idempotency.update(claimed.model_copy(update={"response_status": 500}))
    stored = stores.idempotency.get("app-1|", "key-1")
    assert stored is not None and stored.state is IdempotencyState.COMPLETED and stored.response_status == 202


def test_purge_removes_only_expired_keys(stores: Stores) -> None:
    stores.idempotency.claim(idem_record(key="old", expires=NOW - timedelta(minutes=1)))
    stores.idempotency.claim(idem_record(key="new", expires=NOW + timedelta(hours=1)))
    assert stores.idempotency.purge_expired(NOW) == 1
    assert stores.idempotency.get("app-1|", "old") is None
    assert stores.idempotency.get("app-1|", "new") is not None
    stores.idempotency.delete("app-1|", "new")
    stores.idempotency.delete("app-1|", "new")
    assert stores.idempotency.get("app-1|", "new") is None


def test_purge_handles_more_than_one_batch_per_caller(stores: Stores) -> None:
    for i in range(150):
        stores.idempotency.claim(idem_record(caller="bulk|", key=f"k{i:03d}", expires=NOW - timedelta(seconds=1)))
    stores.idempotency.claim(idem_record(caller="bulk|", key="keep"))
    assert stores.idempotency.purge_expired(NOW) == 150
    assert stores.idempotency.get("bulk|", "k149") is None and stores.idempotency.get("bulk|", "keep") is not None


# --- changes and lineage ------------------------------------------------------------------------------


def test_create_stores_record_and_first_event_together(stores: Stores) -> None:
    rec = stores.changes.create(change_record("c1"), event("c1", 1))
    assert rec.etag
    got = stores.changes.get("c1")
    assert got is not None and got.status is ChangeStatus.ACCEPTED and got.etag == rec.etag
    assert got.requested_by.app_id == "crm"
    assert [e.sequence for e in stores.changes.lineage("c1")] == [1]
    with pytest.raises(AlreadyExistsError):
        stores.changes.create(change_record("c1"), event("c1", 1))
    assert stores.changes.get("missing") is None
    assert stores.changes.lineage("missing") == []


def test_transition_is_one_atomic_step_guarded_by_etag(stores: Stores) -> None:
    rec = stores.changes.create(change_record("c2"), event("c2", 1))
    moved = stores.changes.transition(
        rec.model_copy(update={"status": ChangeStatus.VALIDATING, "sequence": 2}),
        event("c2", 2, ChangeStatus.VALIDATING),
    )
    # A stale writer (old etag) changes nothing: neither the record nor the lineage.
    with pytest.raises(ConcurrencyError):
        stores.changes.transition(
            rec.model_copy(update={"status": ChangeStatus.FAILED}), event("c2", 3, ChangeStatus.FAILED)
        )
    # A writer with a fresh etag but a sequence already taken (replayed step) changes nothing either.
    with pytest.raises(AlreadyExistsError):
        stores.changes.transition(
            moved.model_copy(update={"status": ChangeStatus.FAILED}), event("c2", 2, ChangeStatus.FAILED)
        )
    got = stores.changes.get("c2")
    assert got is not None and got.status is ChangeStatus.VALIDATING and got.etag == moved.etag
    assert [(e.sequence, e.status) for e in stores.changes.lineage("c2")] == [
        (1, ChangeStatus.ACCEPTED),
        (2, ChangeStatus.VALIDATING),
    ]


def test_large_record_fields_survive(stores: Stores) -> None:
    big_plan = {"diff": [{"op": "add", "path": f"/x/{i}", "value": "é" * 50} for i in range(2000)]}
    rec = stores.changes.create(change_record("c3", plan=big_plan), event("c3", 1))
    got = stores.changes.get("c3")
    assert got is not None and got.plan is not None and got.plan.to_record() == big_plan and got.etag == rec.etag


def test_lineage_is_ordered_by_sequence_past_nine(stores: Stores) -> None:
    rec = stores.changes.create(change_record("c4"), event("c4", 1))
    for seq in range(2, 13):
        rec = stores.changes.transition(rec.model_copy(update={"sequence": seq}), event("c4", seq))
    assert [e.sequence for e in stores.changes.lineage("c4")] == list(range(1, 13))


def test_one_transition_may_record_several_events_atomically(stores: Stores) -> None:
    rec = stores.changes.create(change_record("c5"), event("c5", 1))
    rec = stores.changes.transition(
        rec.model_copy(update={"status": ChangeStatus.WRITING, "sequence": 4}),
        event("c5", 2, ChangeStatus.VALIDATING),
        event("c5", 3, ChangeStatus.VALIDATING),
        event("c5", 4, ChangeStatus.WRITING),
    )
    # A batch whose last event collides applies none of its events and leaves the record alone.
    with pytest.raises(AlreadyExistsError):
        stores.changes.transition(
            rec.model_copy(update={"status": ChangeStatus.FAILED}),
            event("c5", 5, ChangeStatus.FAILED),
            event("c5", 4, ChangeStatus.FAILED),
        )
    assert [e.sequence for e in stores.changes.lineage("c5")] == [1, 2, 3, 4]
    got = stores.changes.get("c5")
    assert got is not None and got.status is ChangeStatus.WRITING


def test_query_filters_and_pages_with_continuation_tokens(stores: Stores) -> None:
    ids = [f"q{i:02d}" for i in range(7)]
    for i, cid in enumerate(ids):
        status = ChangeStatus.FAILED if i % 2 == 0 else ChangeStatus.COMPLETED
        stores.changes.create(change_record(cid, status=status), event(cid, 1, status))
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = stores.changes.query(status=ChangeStatus.FAILED, page_size=2, continuation_token=token)
        pages += 1
        seen += [r.change_id for r in page.items]
        assert all(r.status is ChangeStatus.FAILED for r in page.items)
        token = page.continuation_token
        if token is None:
            break
    assert sorted(seen) == ["q00", "q02", "q04", "q06"] and pages >= 2
    assert stores.changes.query(target="elsewhere").items == []
    with pytest.raises(RequestError) as err:
        stores.changes.query(continuation_token="not-a-token!")
    assert err.value.issues[0].path == "continuationToken"


def test_query_reads_a_change_id_range_in_id_order(stores: Stores) -> None:
    """The outbox sweeper's read: accepted changes whose time-ordered ids fall in [low, high), oldest first."""
    times = [NOW + timedelta(minutes=m) for m in range(6)]
    ids = [new_change_id(t) for t in times]
    for i, cid in enumerate(ids):
        status = ChangeStatus.COMPLETED if i == 3 else ChangeStatus.ACCEPTED
        stores.changes.create(change_record(cid, status=status), event(cid, 1, status))
    stores.changes.create(change_record("c-outside"), event("c-outside", 1))
    window = (change_id_floor(times[1]), change_id_floor(times[5]))
    seen: list[str] = []
    token: str | None = None
    while True:
        page = stores.changes.query(
            status=ChangeStatus.ACCEPTED, change_ids=window, page_size=2, continuation_token=token
        )
        seen += [r.change_id for r in page.items]
        token = page.continuation_token
        if token is None:
            break
    assert seen == [ids[1], ids[2], ids[4]]


def test_resource_history_is_newest_first_paged_and_idempotent(stores: Stores) -> None:
    for i in range(5):
        entry = ResourceChange(
            target="local-ehr", resource_type="Patient", resource_id="p/1", change_id=f"h{i}", at=NOW + timedelta(i)
        )
        stores.changes.index_resource(entry)
        stores.changes.index_resource(entry)
    first = stores.changes.resource_history("local-ehr", "Patient", "p/1", page_size=3)
    assert [e.change_id for e in first.items] == ["h4", "h3", "h2"]
    assert first.continuation_token
    rest = stores.changes.resource_history(
        "local-ehr", "Patient", "p/1", page_size=3, continuation_token=first.continuation_token
    )
    assert [e.change_id for e in rest.items] == ["h1", "h0"] and rest.continuation_token is None
    assert stores.changes.resource_history("local-ehr", "Patient", "p1").items == []


# --- payloads ------------------------------------------------------------------------------------------


def test_small_payload_is_inline_and_large_goes_to_a_blob(stores: Stores) -> None:
    small = b'{"resourceType":"Patient","name":[{"family":"\xc3\xa9"}]}'
    ref = stores.payloads.put("p1", small)
    assert ref.kind == "inline" and stores.payloads.get(ref) == small
    large = b'{"x":"' + b"a" * (INLINE_MAX + 10) + b'"}'
    ref2 = stores.payloads.put("p2", large)
    assert ref2.kind == "blob" and ref2.size == len(large)
    assert stores.payloads.get(ref2) == large
    assert stores.payloads.put("p2", large) == ref2


def test_delete_removes_a_blob_and_gone_or_inline_is_fine(stores: Stores) -> None:
    inline = stores.payloads.put("d1", b"{}")
    blob = stores.payloads.put("d1", b"x" * (INLINE_MAX + 1), name="proposed")
    kept = stores.payloads.put("d2", b"y" * (INLINE_MAX + 1))

    stores.payloads.delete(blob)
    stores.payloads.delete(blob)
    stores.payloads.delete(inline)

    with pytest.raises(NotFoundError):
        stores.payloads.get(blob)
    assert stores.payloads.get(kept) == b"y" * (INLINE_MAX + 1)


def test_query_finds_drifted_completions(stores: Stores) -> None:
    for cid, verified in (("v1", True), ("v2", False), ("v3", None)):
        result = None if verified is None else {"versionId": "x", "verified": verified}
        stores.changes.create(change_record(cid, status=ChangeStatus.COMPLETED, result=result), event(cid, 1))
    drifted = stores.changes.query(verified=False).items
    assert [r.change_id for r in drifted] == ["v2"]
    assert [r.change_id for r in stores.changes.query(verified=True).items] == ["v1"]


def _move(stores: Stores, change_id: str, status: ChangeStatus, **updates: object) -> ChangeRecord:
    record = stores.changes.get(change_id)
    assert record is not None
    sequence = len(stores.changes.lineage(change_id)) + 1
    moved = record.model_copy(update={"status": status, "sequence": sequence, **updates})
    return stores.changes.transition(moved, event(change_id, sequence, status))


def _all(stores: Stores, **filters: object) -> list[str]:
    seen: list[str] = []
    token: str | None = None
    while True:
        page = stores.changes.query(page_size=2, continuation_token=token, **filters)  # type: ignore[arg-type]
        seen += [r.change_id for r in page.items]
        token = page.continuation_token
        if token is None:
            return seen


def test_review_and_exception_queues_list_changes_while_they_are_in_the_status(stores: Stores) -> None:
    ids = [new_change_id(NOW + timedelta(seconds=s)) for s in range(6)]
    for cid in ids:
        stores.changes.create(change_record(cid), event(cid, 1))
    _move(stores, ids[0], ChangeStatus.AWAITING_APPROVAL)
    _move(stores, ids[1], ChangeStatus.AWAITING_APPROVAL, target="other-ehr")
    _move(stores, ids[2], ChangeStatus.FAILED)
    _move(stores, ids[3], ChangeStatus.CONFLICT, resource_type="Observation")
    _move(stores, ids[4], ChangeStatus.EXPIRED)
    assert _all(stores, status=ChangeStatus.AWAITING_APPROVAL) == [ids[0], ids[1]]
    assert _all(stores, status=ChangeStatus.AWAITING_APPROVAL, target="other-ehr") == [ids[1]]
    assert _all(stores, status=ChangeStatus.CONFLICT, resource_type="Observation") == [ids[3]]
    assert _all(stores, status=ChangeStatus.CONFLICT, resource_type="Patient") == []
    # Approved: it leaves the review queue. Retried: it leaves the exception queue, and comes back if it fails again.
    _move(stores, ids[0], ChangeStatus.WRITING)
    _move(stores, ids[2], ChangeStatus.ACCEPTED)
    assert _all(stores, status=ChangeStatus.AWAITING_APPROVAL) == [ids[1]]
    assert _all(stores, status=ChangeStatus.FAILED) == []
    _move(stores, ids[2], ChangeStatus.FAILED)
    assert _all(stores, status=ChangeStatus.FAILED) == [ids[2]]
    assert _all(stores, status=ChangeStatus.EXPIRED) == [ids[4]]
    assert _all(stores, status=ChangeStatus.FAILED, change_ids=(ids[3], ids[5])) == []


def test_a_transition_that_loses_its_race_leaves_the_queue_unchanged(stores: Stores) -> None:
    cid = new_change_id(NOW)
    created = stores.changes.create(change_record(cid), event(cid, 1))
    _move(stores, cid, ChangeStatus.WRITING)
    stale = created.model_copy(update={"status": ChangeStatus.FAILED, "sequence": 3})
    with pytest.raises(ConcurrencyError):
        stores.changes.transition(stale, event(cid, 3, ChangeStatus.FAILED))
    assert _all(stores, status=ChangeStatus.FAILED) == []


def test_drift_queue_follows_the_result(stores: Stores) -> None:
    cid = new_change_id(NOW)
    stores.changes.create(change_record(cid), event(cid, 1))
    _move(stores, cid, ChangeStatus.COMPLETED, result=ChangeResult(version_id="x", verified=False))
    assert _all(stores, verified=False) == [cid]
    assert _all(stores, verified=False, status=ChangeStatus.COMPLETED) == [cid]
    _move(stores, cid, ChangeStatus.COMPLETED, result=ChangeResult(version_id="x", verified=True))
    assert _all(stores, verified=False) == []
    assert _all(stores, verified=True) == [cid]
