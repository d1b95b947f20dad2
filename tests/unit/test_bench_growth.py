"""tools.bench_growth: the figures have the documented shape and measure valid input / complete histories."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from shared.core.fhir_validation import validation_issues
from tools.bench_growth import (
    API_DEFAULT_PAGE_SIZE,
    lineage_query_growth,
    patient_bundle,
    sweep_queue_growth,
    validation_growth,
)

if TYPE_CHECKING:
    from tools.services.azurite import Azurite


def test_patient_bundle_is_valid_fhir() -> None:
    bundle = patient_bundle(3)
    assert len(bundle["entry"]) == 3
    assert validation_issues(bundle, expected_type="Bundle") == []


def test_validation_growth_shape() -> None:
    rows = validation_growth(sizes=(1, 3))
    json.dumps(rows)
    assert [r["size"] for r in rows] == [1, 3]
    for row in rows:
        assert row["issues"] == 0
        assert row["medianMs"] > 0
        assert row["msPerEntry"] == pytest.approx(row["medianMs"] / row["size"], rel=1e-2)
        assert row["repeats"] >= 1
    assert rows[0]["ratioTo1"] == 1.0
    assert rows[1]["ratioTo1"] > 0


@pytest.mark.integration
def test_lineage_query_growth_reads_every_change(azurite: Azurite) -> None:
    rows = lineage_query_growth(azurite.connection_string, sizes=(10, 120))
    json.dumps(rows)
    assert [r["size"] for r in rows] == [10, 120]
    for row in rows:
        assert row["returned"] == row["size"]
        assert row["firstPageItems"] == min(row["size"], API_DEFAULT_PAGE_SIZE)
        assert row["pageSize"] == API_DEFAULT_PAGE_SIZE
        assert row["medianMs"] > 0 and row["allPagesMedianMs"] > 0
    assert rows[0]["pages"] == 1
    assert rows[1]["pages"] == 3  # 50 + 50 + 20: crosses two page boundaries
    assert rows[0]["ratioToSmallest"] == 1.0


def test_sweep_queue_growth_reads_only_the_recent_changes(azurite: Azurite) -> None:
    rows = sweep_queue_growth(azurite.connection_string, sizes=(50, 200))
    json.dumps(rows)
    assert [r["size"] for r in rows] == [50, 200]
    for row in rows:
        assert row["sweepRead"] == 20  # the recent accepted changes, however many older ones the table holds
        assert row["sweepMs"] > 0 and row["fullScanMs"] > 0 and row["queueMs"] > 0 and row["queueScanMs"] > 0
