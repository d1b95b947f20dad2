"""The per-caller intake rate limit on two instances: requests sent to each instance's own address share one
allowance (a limit kept in each process would admit a burst per instance)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import Gateway, put_patient, serve_gateway
from tests.e2e.test_pipeline import update_body

pytestmark = pytest.mark.e2e

BURST = 3


@pytest.fixture(scope="module")
def limited(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from serve_gateway(
        request, "rate-limited", WRITEBACK_INTAKE_RATE_PER_CALLER="0.5", WRITEBACK_INTAKE_BURST_PER_CALLER=str(BURST)
    )


def test_one_callers_allowance_holds_across_both_instances(limited: Gateway) -> None:
    patient = put_patient(limited, f"p-{uuid.uuid4().hex[:12]}")
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0900"}])
    urls = [i["url"].rstrip("/") for i in limited.live_instances()]
    assert len(urls) == 2

    def post(url: str) -> httpx.Response:
        headers = {**limited.headers(), "Idempotency-Key": str(uuid.uuid4())}
        return httpx.post(f"{url}/api/v1/changes", json=body, headers=headers, timeout=30)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, [urls[i % 2] for i in range(12)]))
    elapsed = time.monotonic() - started
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) + len(refused) == 12, [a.status_code for a in answers]
    assert len(accepted) <= BURST + int(elapsed * 0.5) + 1, (len(accepted), elapsed)
    assert refused, "a burst per instance would have been admitted"
    problem = refused[0]
    assert problem.headers["Content-Type"].startswith("application/problem+json")
    assert int(problem.headers["Retry-After"]) >= 1
    assert problem.json()["type"].endswith("rate-limited")
    other_user = {**limited.headers(user="user-2"), "Idempotency-Key": str(uuid.uuid4())}
    assert httpx.post(f"{limited.api}/changes", json=body, headers=other_user, timeout=30).status_code == 202
