"""A target's rate limit holds for the whole deployment: two instances, 20 changes at once, a target configured at
4 calls/s, and the calls counted where they arrive (the local FHIR server notes when each request arrived)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO_ROOT, Gateway, put_patient, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

RATE = 4
CHANGES = 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@pytest.fixture
def slow_target(
    azurite: Any, token_endpoint: Any, fhir_server: Any, fhir_token: str, tmp_path: Path
) -> Iterator[Gateway]:
    """Two instances writing to the local FHIR server, the target configured at 4 calls/s."""
    targets = yaml.safe_load((REPO_ROOT / "config" / "targets.yaml").read_text())
    targets["targets"]["local-ehr"]["rate_limit_per_second"] = RATE
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(yaml.safe_dump(targets))
    state = tmp_path / "gateway"
    state.mkdir()
    gw = start_gateway(
        azurite, token_endpoint, fhir_server, fhir_token, state, instances=2, WRITEBACK_TARGETS_FILE=str(targets_file)
    )
    try:
        yield gw
    finally:
        stop_gateway(gw)


def most_in_one_second(times: list[float]) -> int:
    return max((sum(1 for t in times if start <= t < start + 1.0) for start in times), default=0)


def test_two_instances_keep_to_the_targets_rate_together(slow_target: Gateway, fhir_server: Any) -> None:
    gw = slow_target
    patients = [put_patient(gw, f"p-{uuid.uuid4().hex[:12]}") for _ in range(CHANGES)]
    fhir_server.reset_stats()

    def change(patient: dict[str, Any]) -> str:
        body = {
            "target": "local-ehr",
            "operation": "patch",
            "resourceRef": f"Patient/{patient['id']}",
            "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0199"}],
        }
        return gw.submit(body).json()["changeId"]

    with ThreadPoolExecutor(CHANGES) as pool:
        change_ids = list(pool.map(change, patients))
    ended = [gw.wait(cid, timeout=240) for cid in change_ids]

    assert [(r["status"], r.get("error")) for r in ended] == [("completed", None)] * CHANGES
    times = sorted(ms / 1000 for ms in fhir_server.stats()["arrivals"])
    assert len(times) >= 2 * CHANGES, "every change read and wrote at the target"
    assert most_in_one_second(times) <= RATE, [round(b - a, 3) for a, b in pairwise(times)]
