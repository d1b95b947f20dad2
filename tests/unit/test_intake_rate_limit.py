"""The per-caller intake rate limit at the API: off by default; when set, 429 problem+json with Retry-After and
nothing stored, per caller."""

from __future__ import annotations

import json
import uuid

from shared.api.caller_identity import ROLE_SUBMIT, encode_easyauth_principal
from shared.bootstrap import Gateway
from shared.core.rate_limits import Gcra
from shared.fakes.intake_limiter import FakeIntakeLimiter
from shared.fakes.stores import FakeChangeStore
from tests.fake_gateway import fake_gateway

BODY = json.dumps(
    {
        "target": "local-ehr",
        "operation": "update",
        "resource": {"resourceType": "Patient", "id": "p1", "telecom": [{"system": "phone", "value": "1"}]},
    }
).encode()


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def submit(gw: Gateway, user: str = "u1") -> tuple[int, dict[str, str], dict[str, object]]:
    headers = {
        "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("crm", [ROLE_SUBMIT], user_id=user),
        "Idempotency-Key": str(uuid.uuid4()),
        "Content-Type": "application/json",
    }
    answer = gw.changes_api.submit(headers, BODY, "http://gw")
    return answer.status, answer.headers, answer.body


def stored(gw: Gateway) -> int:
    store = gw.journal.store
    assert isinstance(store, FakeChangeStore)
    return len(store._records)


def test_off_by_default_a_storm_from_one_caller_is_taken_in() -> None:
    gw = fake_gateway()
    assert gw.intake_limiter is None
    assert {submit(gw)[0] for _ in range(30)} == {202}
    assert stored(gw) == 30


def test_a_caller_over_its_limit_gets_429_with_retry_after_and_nothing_is_stored() -> None:
    clock = Clock()
    gw = fake_gateway(intake_limiter=FakeIntakeLimiter(Gcra(rate=0.5, burst=2), clock=clock))
    assert [submit(gw)[0] for _ in range(2)] == [202, 202]
    status, headers, body = submit(gw)
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert str(body["type"]).endswith("rate-limited") and body["status"] == 429
    assert stored(gw) == 2
    assert submit(gw, user="u2")[0] == 202, "another caller has its own allowance"
    clock.now += 2
    assert submit(gw)[0] == 202
