"""How costs grow with size: FHIR validation by Bundle size, resource-lineage queries by history length.

Every function returns plain JSON-able dicts, one per size, ``size`` first; times are wall-clock milliseconds
(``time.perf_counter``), the median of a few repeats after one warm-up per size.

``validation_growth`` (no services): ``validate_resource`` -- the call intake makes on a submitted resource -- on a
``collection`` Bundle of ``size`` small Patients (name, gender, birthDate, telecom), valid as the validator sees it.

- ``medianMs``: one validation of the whole Bundle;
- ``msPerEntry``: ``medianMs / size``; flat when validation grows linearly with the number of entries;
- ``ratioTo1``: ``medianMs`` over the 1-entry Bundle's ``medianMs`` (``null`` when size 1 was not measured);
- ``issues``: what ``validation_issues`` reported for the input (always 0: the figures time valid input);
- ``repeats``: how many timed runs the median is taken over (fewer for big Bundles).

``lineage_query_growth`` (Azure Table Storage, e.g. Azurite): ``TableChangeStore.resource_history`` for one resource
whose index holds ``size`` changes. The index rows are written directly, 100 per entity-group transaction, in the
shape ``index_resource`` writes (checked against one row written by ``index_resource`` itself).

- ``medianMs``: the first page at the API's default page size (``GET /api/v1/lineage/...`` without ``pageSize``);
- ``firstPageItems``: how many changes that page held (``min(size, pageSize)``);
- ``allPagesMedianMs``: reading the whole history page by page at that page size, following continuation tokens;
- ``pages`` / ``returned``: pages read and changes returned by that walk (``returned == size``);
- ``msPerPage``: ``allPagesMedianMs / pages``; flat when a later page costs what the first one does;
- ``ratioToSmallest``: ``medianMs`` over the smallest size's ``medianMs``;
- ``populateS`` / ``rowsPerS``: how long writing the index rows took (setup, not part of the query figures).

``sweep_queue_growth`` (Azure Table Storage, e.g. Azurite): the outbox sweeper and the failed-changes queue when the
changes table holds ``size`` changes taken over the previous day (1 % failed, the rest completed) plus 20 recent
accepted ones. Each figure is beside the read the code made before (a filter over the whole changes table):

- ``sweepMs`` / ``sweepRead``: one ``OutboxSweeper.sweep`` (its key range from the cursor) and the records it read;
- ``fullScanMs``: ``Status eq 'accepted'`` over every record row, which the sweeper ran twice per run before;
- ``queueMs`` / ``queueScanMs``: the first page (50) of ``query(status=failed)`` through the queue index, and the
  same filter as a table scan;
- ``populateS``: how long writing the added records took (setup).

Run ``python -m tools.bench_growth`` (``--quick`` for smaller sizes) to start Azurite, print the tables and stop it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from azure.data.tables import TableClient

from shared.adapters.table_change_store import newest_first_key, record_entity, resource_partition
from shared.adapters.table_codec import pack_json
from shared.adapters.table_maintenance import MAX_BATCH
from shared.bootstrap import Gateway, build
from shared.config import Settings
from shared.core.change_ids import new_change_id
from shared.core.fhir_validation import validate_resource, validation_issues
from shared.core.models import (
    ChangeRecord,
    ChangeStatus,
    LineageEvent,
    Operation,
    Principal,
    ResourceChange,
)
from shared.core.ports import ChangeStore
from shared.core.record_parts import PayloadRef
from shared.core.targets import TargetRegistry
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeIdempotencyStore, FakePayloadStore

__all__ = [
    "API_DEFAULT_PAGE_SIZE",
    "LINEAGE_SIZES",
    "SWEEP_SIZES",
    "VALIDATION_SIZES",
    "lineage_query_growth",
    "main",
    "patient_bundle",
    "sweep_queue_growth",
    "validation_growth",
]

VALIDATION_SIZES: tuple[int, ...] = (1, 10, 100, 500)
LINEAGE_SIZES: tuple[int, ...] = (10, 100, 1000, 10000)
QUICK_VALIDATION_SIZES: tuple[int, ...] = (1, 10, 100)
QUICK_LINEAGE_SIZES: tuple[int, ...] = (10, 100, 1000)
SWEEP_SIZES: tuple[int, ...] = (1000, 10000)
QUICK_SWEEP_SIZES: tuple[int, ...] = (100, 1000)

# shared/api/changes_api.py `_page_size`: GET /api/v1/lineage/{target}/{type}/{id} without ?pageSize reads 50.
API_DEFAULT_PAGE_SIZE = 50

_TARGET = "bench-ehr"
_RESOURCE_TYPE = "Patient"
_POPULATE_WORKERS = 4
_GENDERS = ("male", "female", "other", "unknown")


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


# --- validation ---------------------------------------------------------------------------------------------------


def _patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"bench-{i}",
        "active": True,
        "name": [{"use": "official", "family": f"Family{i}", "given": ["Alex", f"M{i}"]}],
        "gender": _GENDERS[i % len(_GENDERS)],
        "birthDate": f"{1940 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "telecom": [
            {"system": "phone", "value": f"+1-555-{i % 10000:04d}", "use": "home"},
            {"system": "email", "value": f"patient{i}@example.org"},
        ],
    }


def patient_bundle(size: int) -> dict[str, Any]:
    """A ``collection`` Bundle of ``size`` Patients, each with a ``urn:uuid`` fullUrl."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{uuid.UUID(int=i + 1)}", "resource": _patient(i)} for i in range(size)],
    }


def _validation_repeats(size: int) -> int:
    if size <= 10:
        return 50
    if size <= 100:
        return 15
    return 5


def validation_growth(sizes: Sequence[int] = VALIDATION_SIZES) -> list[dict[str, Any]]:
    """Median time of ``validate_resource`` on a Bundle of n Patients, per size (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        bundle = patient_bundle(size)
        issues = validation_issues(bundle, expected_type="Bundle")  # also the warm-up
        if issues:
            raise RuntimeError(f"the {size}-entry benchmark Bundle is not valid: {issues[:3]}")
        repeats = _validation_repeats(size)
        median = _median_ms(partial(validate_resource, bundle, expected_type="Bundle"), repeats)
        rows.append(
            {
                "size": size,
                "medianMs": round(median, 4),
                "msPerEntry": round(median / size, 5) if size else None,
                "issues": len(issues),
                "repeats": repeats,
            }
        )
    base = next((r["medianMs"] for r in rows if r["size"] == 1), None)
    for row in rows:
        row["ratioTo1"] = round(row["medianMs"] / base, 2) if base else None
    return rows


# --- resource lineage ---------------------------------------------------------------------------------------------


def _index_entity(entry: ResourceChange) -> dict[str, Any]:
    """The row ``TableChangeStore.index_resource`` writes for ``entry`` (checked by ``_check_entity_shape``)."""
    return {
        "PartitionKey": resource_partition(entry.target, entry.resource_type, entry.resource_id),
        "RowKey": newest_first_key(entry.at, entry.change_id),
        "ChangeId": entry.change_id,
        **pack_json(entry.model_dump(mode="json", by_alias=True)),
    }


def _changes(resource_id: str, size: int) -> list[ResourceChange]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        ResourceChange(
            target=_TARGET,
            resource_type=_RESOURCE_TYPE,
            resource_id=resource_id,
            change_id=uuid.uuid4().hex,
            at=start + timedelta(seconds=i),
        )
        for i in range(size)
    ]


def _check_entity_shape(store: ChangeStore, table: TableClient, entry: ResourceChange) -> None:
    """Write ``entry`` with the real ``index_resource`` and compare the stored row with ``_index_entity``."""
    store.index_resource(entry)
    expected = _index_entity(entry)
    stored = dict(table.get_entity(expected["PartitionKey"], expected["RowKey"]))
    if stored != expected:
        raise RuntimeError(
            "index_resource no longer writes the row this benchmark writes: "
            f"stored properties {sorted(stored)}, benchmark {sorted(expected)}"
        )


def _populate(table: TableClient, entries: Iterable[ResourceChange]) -> None:
    rows = [_index_entity(e) for e in entries]
    batches = [rows[i : i + MAX_BATCH] for i in range(0, len(rows), MAX_BATCH)]
    with ThreadPoolExecutor(max_workers=_POPULATE_WORKERS) as pool:
        for _ in pool.map(lambda batch: table.submit_transaction([("upsert", r) for r in batch]), batches):
            pass


def _walk(store: ChangeStore, resource_id: str, page_size: int) -> tuple[int, int]:
    """Read the whole history page by page; (pages, changes returned)."""
    pages = returned = 0
    token: str | None = None
    while True:
        page = store.resource_history(
            _TARGET, _RESOURCE_TYPE, resource_id, page_size=page_size, continuation_token=token
        )
        pages += 1
        returned += len(page.items)
        token = page.continuation_token
        if not token:
            return pages, returned


def _lineage_repeats(size: int) -> tuple[int, int]:
    """(first-page repeats, whole-walk repeats)."""
    if size <= 100:
        return 15, 7
    if size <= 1000:
        return 11, 5
    return 7, 3


def lineage_query_growth(
    connection_string: str,
    sizes: Sequence[int] = LINEAGE_SIZES,
    *,
    page_size: int = API_DEFAULT_PAGE_SIZE,
) -> list[dict[str, Any]]:
    """Median time of ``resource_history`` for a resource with n indexed changes (see the module docstring).

    Uses tables with a fresh random prefix and deletes them before returning.
    """
    prefix = "bgrow" + uuid.uuid4().hex[:8]
    gateway = _on_tables(connection_string, prefix)
    service, store = gateway.table_service, gateway.change_store
    table = service.get_table_client(f"{prefix}resources")
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:
            if size < 1:
                raise ValueError("each size must be at least 1")
            resource_id = f"growth-{size}-{uuid.uuid4().hex[:6]}"
            entries = _changes(resource_id, size)
            start = time.perf_counter()
            _check_entity_shape(store, table, entries[-1])
            _populate(table, entries[:-1])
            populate_s = time.perf_counter() - start

            def first_page(rid: str = resource_id) -> int:
                return len(store.resource_history(_TARGET, _RESOURCE_TYPE, rid, page_size=page_size).items)

            first_items = first_page()  # warm-up
            pages, returned = _walk(store, resource_id, page_size)  # warm-up
            first_repeats, walk_repeats = _lineage_repeats(size)
            first_ms = _median_ms(first_page, first_repeats)
            walk_ms = _median_ms(partial(_walk, store, resource_id, page_size), walk_repeats)
            rows.append(
                {
                    "size": size,
                    "pageSize": page_size,
                    "medianMs": round(first_ms, 3),
                    "firstPageItems": first_items,
                    "allPagesMedianMs": round(walk_ms, 3),
                    "pages": pages,
                    "returned": returned,
                    "msPerPage": round(walk_ms / pages, 3),
                    "repeats": first_repeats,
                    "allPagesRepeats": walk_repeats,
                    "populateS": round(populate_s, 3),
                    "rowsPerS": round(size / populate_s) if populate_s > 0 else None,
                }
            )
    finally:
        for name in (f"{prefix}changes", f"{prefix}resources", f"{prefix}queues"):
            service.delete_table(name)
    base = rows[0]["medianMs"] if rows else None
    for row in rows:
        row["ratioToSmallest"] = round(row["medianMs"] / base, 2) if base else None
    return rows


# --- the outbox sweeper and the exception queue ------------------------------------------------------------------

_REPO_ROOT = Path(__file__).resolve().parents[1]
_RECENT_ACCEPTED = 20


def _on_tables(connection_string: str, prefix: str, **overrides: Any) -> Gateway:
    """The gateway's parts over Table storage at ``connection_string`` (tables named with ``prefix``), built by the
    composition root; ``overrides`` replace parts by name."""
    settings = Settings(
        storage_connection_string=connection_string,
        table_prefix=prefix,
        targets_file=_REPO_ROOT / "config" / "targets.yaml",
        policy_file=_REPO_ROOT / "config" / "policy.yaml",
        # What the sweep figures assume (the defaults), whatever the environment says.
        sweep_after_seconds=60,
        stuck_after_minutes=30,
        sweep_grace_minutes=15,
    )
    return build(settings, **overrides)


def _record(change_id: str, status: ChangeStatus, at: datetime) -> ChangeRecord:
    return ChangeRecord(
        change_id=change_id,
        status=status,
        target=_TARGET,
        operation=Operation.PATCH,
        resource_type=_RESOURCE_TYPE,
        resource_id="p1",
        requested_by=Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"]),
        submitted_at=at,
        updated_at=at,
        request_hash="a" * 64,
        payload=PayloadRef(kind="inline", sha256="b" * 64, size=2, inline="{}"),
        enqueued=True,
    )


def _first_event(record: ChangeRecord) -> LineageEvent:
    return LineageEvent(
        change_id=record.change_id,
        sequence=1,
        event=record.status.value,
        status=record.status,
        at=record.updated_at,
        actor="gateway",
    )


def sweep_queue_growth(connection_string: str, sizes: Sequence[int] = SWEEP_SIZES) -> list[dict[str, Any]]:
    """The sweeper's read and the failed queue's first page as the changes table grows (see the module docstring).

    Uses tables with a fresh random prefix and deletes them before returning.
    """
    prefix = "bsweep" + uuid.uuid4().hex[:8]
    gateway = _on_tables(
        connection_string,
        prefix,
        idempotency_store=FakeIdempotencyStore(),
        payload_store=FakePayloadStore(),
        publisher=FakeMessagePublisher(),
        targets=TargetRegistry.from_file(_REPO_ROOT / "config" / "targets.yaml", {}),
    )
    service, store, sweeper = gateway.table_service, gateway.change_store, gateway.sweeper
    changes = service.get_table_client(f"{prefix}changes")
    now = datetime.now(UTC)
    for i in range(_RECENT_ACCEPTED):
        at = now - timedelta(minutes=10) + timedelta(seconds=i)
        record = _record(new_change_id(at), ChangeStatus.ACCEPTED, at)
        store.create(record, _first_event(record))
    rows: list[dict[str, Any]] = []
    held = 0
    try:
        for size in sorted(sizes):
            started = time.perf_counter()
            day_ago = now - timedelta(days=1)
            added = [
                _record(new_change_id(t), ChangeStatus.FAILED if i % 100 == 0 else ChangeStatus.COMPLETED, t)
                for i in range(held, size)
                for t in [day_ago + timedelta(seconds=i * 86_000 / max(sizes))]
            ]
            with ThreadPoolExecutor(max_workers=_POPULATE_WORKERS) as pool:
                for _ in pool.map(
                    lambda r: (
                        store.create(r, _first_event(r))
                        if r.status is ChangeStatus.FAILED
                        else changes.upsert_entity(record_entity(r))
                    ),
                    added,
                ):
                    pass
            held = size
            populate_s = time.perf_counter() - started
            result = sweeper.sweep(now)  # warm-up; sets the cursor
            repeats = 7 if size <= 1000 else 3

            def full_scan() -> int:
                return len(list(changes.query_entities("RowKey eq 'record' and Status eq 'accepted'")))

            def queue_scan() -> int:
                query = "RowKey eq 'record' and Status eq 'failed'"
                return len(list(next(changes.query_entities(query, results_per_page=API_DEFAULT_PAGE_SIZE).by_page())))

            rows.append(
                {
                    "size": size,
                    "sweepMs": round(_median_ms(partial(sweeper.sweep, now), repeats), 2),
                    "sweepRead": result.read,
                    "fullScanMs": round(_median_ms(full_scan, repeats), 2),
                    "queueMs": round(
                        _median_ms(
                            lambda: store.query(status=ChangeStatus.FAILED, page_size=API_DEFAULT_PAGE_SIZE), repeats
                        ),
                        2,
                    ),
                    "queueScanMs": round(_median_ms(queue_scan, repeats), 2),
                    "repeats": repeats,
                    "populateS": round(populate_s, 2),
                }
            )
    finally:
        for name in ("changes", "resources", "queues", "sweep"):
            service.delete_table(f"{prefix}{name}")
    return rows


# --- command line ---------------------------------------------------------------------------------------------


def _print_validation(rows: Sequence[dict[str, Any]]) -> None:
    print("validate_resource on a Bundle of n Patients")
    print(f"{'entries':>8} {'median ms':>10} {'ms/entry':>9} {'x 1-entry':>10} {'issues':>7} {'repeats':>8}")
    for r in rows:
        ratio = "-" if r["ratioTo1"] is None else f"{r['ratioTo1']:.1f}"
        print(
            f"{r['size']:>8} {r['medianMs']:>10.3f} {r['msPerEntry']:>9.4f} {ratio:>10} "
            f"{r['issues']:>7} {r['repeats']:>8}"
        )


def _print_lineage(rows: Sequence[dict[str, Any]]) -> None:
    page_size = rows[0]["pageSize"] if rows else API_DEFAULT_PAGE_SIZE
    print(f"resource_history for one resource with n changes (page size {page_size})")
    print(
        f"{'changes':>8} {'1st page ms':>12} {'x smallest':>11} {'all pages ms':>13} {'pages':>6} "
        f"{'ms/page':>8} {'returned':>9} {'populate s':>11} {'rows/s':>7}"
    )
    for r in rows:
        print(
            f"{r['size']:>8} {r['medianMs']:>12.2f} {r['ratioToSmallest']:>11.2f} {r['allPagesMedianMs']:>13.1f} "
            f"{r['pages']:>6} {r['msPerPage']:>8.2f} {r['returned']:>9} {r['populateS']:>11.2f} {r['rowsPerS']:>7}"
        )


def _print_sweep_queue(rows: Sequence[dict[str, Any]]) -> None:
    print(f"outbox sweeper and failed queue, changes table holding n changes (+{_RECENT_ACCEPTED} recent accepted)")
    print(
        f"{'changes':>8} {'sweep ms':>9} {'read':>5} {'full scan ms':>13} {'queue ms':>9} {'queue scan ms':>14} "
        f"{'populate s':>11}"
    )
    for r in rows:
        print(
            f"{r['size']:>8} {r['sweepMs']:>9.2f} {r['sweepRead']:>5} {r['fullScanMs']:>13.2f} {r['queueMs']:>9.2f} "
            f"{r['queueScanMs']:>14.2f} {r['populateS']:>11.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds)")
    args = parser.parse_args(argv)
    from tools.services.azurite import start_azurite

    started = time.perf_counter()
    _print_validation(validation_growth(QUICK_VALIDATION_SIZES if args.quick else VALIDATION_SIZES))
    print()
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as logs:
        azurite = start_azurite(log_dir=Path(logs))
        try:
            rows = lineage_query_growth(azurite.connection_string, QUICK_LINEAGE_SIZES if args.quick else LINEAGE_SIZES)
            sweep_rows = sweep_queue_growth(azurite.connection_string, QUICK_SWEEP_SIZES if args.quick else SWEEP_SIZES)
        finally:
            azurite.stop()
    _print_lineage(rows)
    print()
    _print_sweep_queue(sweep_rows)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
