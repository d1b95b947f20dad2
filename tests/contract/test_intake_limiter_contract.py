"""One contract suite for a caller's intake rate limit: the in-memory fake and the Table adapter on Azurite behave
alike for one instance; the Table one also holds across instances (several limiters on one table)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.table_intake_limiter import TableIntakeLimiter
from shared.core.errors import RateLimitedError
from shared.core.ports import IntakeLimiter
from shared.core.rate_limits import Gcra
from shared.fakes.intake_limiter import FakeIntakeLimiter
from tests.contract.tables import FAKE_OR_AZURITE

LIMIT = Gcra(rate=2.0, burst=3)


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


LimiterFactory = Callable[[], IntakeLimiter]


def limiters_of(kind: str, request: pytest.FixtureRequest, clock: Clock) -> LimiterFactory:
    """Makes limiters of one deployment: for the Table kind, each is another instance on the same table."""
    if kind == "fake":
        shared = FakeIntakeLimiter(LIMIT, clock=clock)
        return lambda: shared
    azurite = request.getfixturevalue("azurite")
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    prefix = "t" + uuid.uuid4().hex[:10]

    def new() -> IntakeLimiter:
        limiter = TableIntakeLimiter(service, LIMIT, prefix=prefix, clock=clock)
        limiter.ensure_tables()
        return limiter

    return new


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=FAKE_OR_AZURITE)
def new_limiter(clock: Clock, request: pytest.FixtureRequest) -> LimiterFactory:
    return limiters_of(request.param, request, clock)


def admitted(limiter: IntakeLimiter, caller: str, count: int) -> int:
    taken = 0
    for _ in range(count):
        try:
            limiter.admit(caller)
        except RateLimitedError:
            continue
        taken += 1
    return taken


def test_a_burst_is_admitted_then_the_next_waits_for_its_interval(new_limiter: LimiterFactory, clock: Clock) -> None:
    limiter = new_limiter()
    assert admitted(limiter, "app:crm|u1", 3) == 3
    with pytest.raises(RateLimitedError) as refused:
        limiter.admit("app:crm|u1")
    assert refused.value.retry_after == pytest.approx(0.5)
    assert refused.value.status == 429
    clock.now += 0.5
    limiter.admit("app:crm|u1")
    assert admitted(limiter, "app:crm|u1", 5) == 0


def test_callers_have_their_own_allowance(new_limiter: LimiterFactory) -> None:
    limiter = new_limiter()
    assert admitted(limiter, "app:crm|u1", 5) == 3
    assert admitted(limiter, "app:crm|u2", 5) == 3
    assert admitted(limiter, "app:other/with#odd?chars\\", 5) == 3


def test_over_time_the_rate_holds(new_limiter: LimiterFactory, clock: Clock) -> None:
    limiter = new_limiter()
    taken = 0
    for _ in range(100):  # 10 s in steps of 0.1 s, a request at each
        taken += admitted(limiter, "app:crm", 1)
        clock.now += 0.1
    assert 3 + 20 - 1 <= taken <= 3 + 20  # the burst, then 2 per second


@pytest.mark.integration
def test_the_table_limit_holds_across_instances(clock: Clock, request: pytest.FixtureRequest) -> None:
    factory = limiters_of("azurite", request, clock)
    instances = [factory() for _ in range(3)]
    taken = sum(admitted(instance, "app:crm|u1", 4) for instance in instances)
    assert taken == 3, "three instances admit one burst between them, not one each"
    clock.now += 1.0
    taken = sum(admitted(instance, "app:crm|u1", 2) for instance in instances)
    assert taken == 2
