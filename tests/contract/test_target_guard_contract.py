"""One contract suite for a target's guard (rate limit and circuit breaker): the in-process ``LocalGuard`` and the
deployment-wide ``TableTargetGuard`` on Azurite behave alike for one instance; the Table one also holds across
instances (several guards on one table, as several app instances have)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.fhir_guard import CircuitBreaker, CircuitOpenError, LocalGuard, TargetGuard, TokenBucket
from shared.adapters.table_target_guard import GuardTable, TableTargetGuard
from shared.core.errors import RetryableError
from tests.contract.tables import FAKE_OR_AZURITE
from tests.support import from_threads

RATE = 4.0
THRESHOLD = 3
COOLDOWN = 30.0


@dataclass
class Clock:
    """Wall-clock seconds that move only when a guard sleeps or the test says so; the slots taken, in order."""

    now: float = 1_800_000_000.0
    slots: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slots.append(self.now)


GuardFactory = Callable[[], TargetGuard]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=FAKE_OR_AZURITE)
def new_guard(clock: Clock, request: pytest.FixtureRequest) -> GuardFactory:
    return guards_of(request, clock)


@pytest.fixture(params=[pytest.param("azurite", marks=pytest.mark.integration)])
def table_guards(clock: Clock, request: pytest.FixtureRequest) -> GuardFactory:
    return guards_of(request, clock)


def guards_of(request: pytest.FixtureRequest, clock: Clock) -> GuardFactory:
    """Makes guards of one target: for the Table kind, each is another instance on the same table."""
    if request.param == "fake":
        return lambda: LocalGuard(
            TokenBucket(RATE, clock=clock, sleep=clock.sleep),
            CircuitBreaker(failure_threshold=THRESHOLD, cooldown=COOLDOWN, clock=clock),
        )
    azurite = request.getfixturevalue("azurite")
    table = GuardTable(TableServiceClient.from_connection_string(azurite.connection_string), prefix=_prefix())
    table.ensure_tables()
    table.ensure_tables()
    return lambda: TableTargetGuard(
        table,
        "local-ehr",
        rate=RATE,
        failure_threshold=THRESHOLD,
        cooldown=COOLDOWN,
        clock=clock,
        sleep=clock.sleep,
    )


def _prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def starts(clock: Clock, guard: TargetGuard, calls: int) -> list[float]:
    """When each of ``calls`` calls may start, one after the other."""
    times = []
    for _ in range(calls):
        guard.admit(max_wait=10)
        times.append(clock.now)
    return times


def most_in_one_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered if start <= t < start + 1.0) for start in ordered)


def test_no_second_holds_more_calls_than_the_rate(new_guard: GuardFactory, clock: Clock) -> None:
    times = starts(clock, new_guard(), 40)
    assert most_in_one_second(times) == RATE
    assert times[-1] - times[0] < 40 / RATE * 1.2, "spaced, not starved"


def test_a_slot_further_than_the_wait_allowed_is_refused_with_the_wait_and_not_taken(
    new_guard: GuardFactory, clock: Clock
) -> None:
    guard = new_guard()
    guard.admit(max_wait=0)
    with pytest.raises(RetryableError) as refused:
        guard.admit(max_wait=0.1)
    wait = refused.value.retry_after
    assert wait is not None and 0.1 < wait <= 1.1 / RATE + 1e-6
    clock.now += wait
    guard.admit(max_wait=0)  # the refused call took no slot


def test_the_breaker_opens_at_the_threshold_fails_fast_then_lets_one_trial_through(
    new_guard: GuardFactory, clock: Clock
) -> None:
    guard = new_guard()
    for _ in range(THRESHOLD):
        guard.admit(max_wait=10)
        guard.failed()
    with pytest.raises(CircuitOpenError) as open_:
        guard.admit(max_wait=10)
    assert open_.value.retry_after is not None and open_.value.retry_after >= 1.0
    clock.now += COOLDOWN
    guard.admit(max_wait=10)  # the trial
    with pytest.raises(CircuitOpenError):
        guard.admit(max_wait=10)  # only one
    guard.failed()  # the trial failed: open again
    with pytest.raises(CircuitOpenError):
        guard.admit(max_wait=10)
    clock.now += COOLDOWN
    guard.admit(max_wait=10)
    guard.succeeded()  # the trial succeeded: closed
    starts(clock, guard, 3)


def test_a_success_resets_the_count_of_failures_in_a_row(new_guard: GuardFactory, clock: Clock) -> None:
    guard = new_guard()
    for _ in range(THRESHOLD - 1):
        guard.admit(max_wait=10)
        guard.failed()
    guard.admit(max_wait=10)
    guard.succeeded()
    for _ in range(THRESHOLD - 1):
        guard.admit(max_wait=10)
        guard.failed()
    guard.admit(max_wait=10)  # still closed


# --- across instances (the Table guard only: a LocalGuard holds for its own process, by design) ----------------


def test_two_instances_share_one_rate(table_guards: GuardFactory, clock: Clock) -> None:
    first, second = table_guards(), table_guards()
    times = []
    for i in range(40):
        (first if i % 3 else second).admit(max_wait=10)
        times.append(clock.now)
    assert most_in_one_second(times) == RATE


def test_instances_taking_slots_at_once_never_share_one(table_guards: GuardFactory, clock: Clock) -> None:
    guards = [table_guards(), table_guards()]
    frozen = clock.now
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)

    for guard in guards:
        assert isinstance(guard, TableTargetGuard)
        guard._sleep = sleep

    def take() -> None:
        guards[len(waits) % 2].admit(max_wait=60)

    from_threads(take, 16)
    slots = sorted(frozen + w for w in [0.0, *waits])  # the first slot needs no wait
    assert len(slots) == 16
    assert all(b - a >= 1.1 / RATE - 1e-6 for a, b in pairwise(slots))


def test_a_breaker_opened_by_one_instance_stops_the_others(table_guards: GuardFactory, clock: Clock) -> None:
    first, second = table_guards(), table_guards()
    second.admit(max_wait=10)  # it has read the guard while closed
    for _ in range(THRESHOLD):
        first.admit(max_wait=10)
        first.failed()
    clock.now += 1.0  # past the other instance's refresh
    with pytest.raises(CircuitOpenError):
        second.admit(max_wait=10)


def test_a_trial_taken_by_an_instance_that_died_lapses_and_another_takes_it(
    table_guards: GuardFactory, clock: Clock
) -> None:
    dead, survivor = table_guards(), table_guards()
    for _ in range(THRESHOLD):
        dead.admit(max_wait=10)
        dead.failed()
    clock.now += COOLDOWN
    dead.admit(max_wait=10)  # takes the trial, then its instance is killed
    with pytest.raises(CircuitOpenError):
        survivor.admit(max_wait=10)
    clock.now += COOLDOWN
    survivor.admit(max_wait=10)
    survivor.succeeded()
    starts(clock, survivor, 3)
