"""The per-target rate limit and circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from shared.adapters.fhir_guard import CircuitBreaker, CircuitOpenError, GuardedFhirClient, LocalGuard, TokenBucket
from shared.core.errors import PermanentError, RetryableError
from shared.fakes.fhir import FakeFhirClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limit_of_4_per_second_never_exceeds_4_per_second() -> None:
    clock = Clock()
    bucket = TokenBucket(4, clock=clock, sleep=clock.sleep)
    start = clock.now
    times = []
    for _ in range(40):
        bucket.acquire(max_wait=10)
        times.append(clock.now)
    # No window of one second holds more than 4 calls.
    for i in range(len(times) - 4):
        assert times[i + 4] - times[i] >= 1.0 - 1e-9
    assert (clock.now - start) == pytest.approx(39 / 4)


def test_a_wait_longer_than_allowed_is_retryable_with_the_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(1, clock=clock, sleep=clock.sleep)
    bucket.acquire(max_wait=0)
    with pytest.raises(RetryableError) as err:
        bucket.acquire(max_wait=0.1)
    assert err.value.retry_after == pytest.approx(1.0)
    clock.now += 1.0
    bucket.acquire(max_wait=0)  # the refused call gave its token back


def test_breaker_opens_after_repeated_failures_fails_fast_then_trials() -> None:
    clock = Clock()
    fake = FakeFhirClient()
    created = fake.create({"resourceType": "Patient"})
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, clock=clock)
    client = GuardedFhirClient(fake, LocalGuard(None, breaker))
    fake.fail_next(RetryableError(detail="503", downstream_status=503), count=3)
    for _ in range(3):
        with pytest.raises(RetryableError):
            client.read("Patient", created.resource["id"])  # type: ignore[index]
    calls_before = len(fake.calls)
    with pytest.raises(CircuitOpenError) as err:
        client.read("Patient", created.resource["id"])  # type: ignore[index]
    assert len(fake.calls) == calls_before  # failed fast: the target was not called
    assert 0 < (err.value.retry_after or 0) <= 30
    clock.now += 31
    assert client.read("Patient", created.resource["id"]).status == 200  # type: ignore[index]
    assert not breaker.is_open


def test_a_failed_trial_opens_again_and_4xx_do_not_trip_it() -> None:
    clock = Clock()
    fake = FakeFhirClient()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=10, clock=clock)
    client = GuardedFhirClient(fake, LocalGuard(None, breaker))
    fake.fail_next(PermanentError(detail="400", downstream_status=400), count=5)
    for _ in range(5):
        with pytest.raises(PermanentError):
            client.search("Patient", {})
    assert not breaker.is_open
    fake.fail_next(RetryableError(detail="503"), count=3)
    for _ in range(2):
        with pytest.raises(RetryableError):
            client.search("Patient", {})
    assert breaker.is_open
    clock.now += 11
    with pytest.raises(RetryableError):
        client.search("Patient", {})  # the trial fails
    with pytest.raises(CircuitOpenError):
        client.search("Patient", {})
