"""Protection for a target FHIR server: a per-target rate limit and a circuit breaker, around any ``FhirClient``.

- Rate limit (``rate_limit_per_second`` in the targets file): a call waits for its slot for up to ``max_wait``
  seconds; past that it raises ``RetryableError`` with the wait, so the change waits on a durable timer instead of
  holding a worker.
- Circuit breaker: after ``failure_threshold`` transient failures in a row, the target is left alone for
  ``cooldown`` seconds: calls fail fast with ``CircuitOpenError`` (retryable, carrying the time left), so changes
  wait rather than pile onto a failing EHR; then one trial call decides between closing and opening again.
Permanent errors (4xx) are the caller's problem, not the target's health: they do not trip the breaker.

A ``TargetGuard`` holds both. ``LocalGuard`` keeps them in this process (a token bucket and a breaker in memory):
right for one process, tests and benchmarks. The deployed app uses ``table_target_guard.TableTargetGuard``, which
holds them for every instance together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from shared.core.errors import RetryableError
from shared.core.ports import FhirClient, FhirResponse

T = TypeVar("T")
MAX_WAIT = 5.0  # seconds a call may wait for its slot before the change waits on a durable timer instead


class CircuitOpenError(RetryableError):
    code = "circuit-open"
    title = "Target temporarily avoided after repeated failures"


class TokenBucket:
    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        # No burst by default: calls are spaced 1/rate apart, so no one-second window holds more than ``rate``.
        self.capacity = burst if burst is not None else 1.0
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Take a token (possibly going into debt) and return how long to wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, max_wait: float) -> None:
        wait = self._reserve()
        if wait > max_wait:
            with self._lock:
                self._tokens += 1  # give the token back: this call will not happen now
            raise RetryableError(detail="rate limit for the target reached", retry_after=wait)
        if wait > 0:
            self._sleep(wait)


class CircuitBreaker:
    def __init__(
        self, *, failure_threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    def before_call(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            remaining = self._opened_at + self.cooldown - self._clock()
            if remaining > 0 or self._trial:
                raise CircuitOpenError(detail="the target failed repeatedly", retry_after=max(remaining, 1.0))
            self._trial = True  # half-open: this call is the one trial

    def succeeded(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial or self._failures >= self.failure_threshold:
                self._opened_at, self._trial = self._clock(), False


class TargetGuard(Protocol):
    def admit(self, max_wait: float) -> None:
        """Return when the call may go; CircuitOpenError or RetryableError (with the wait) when it may not now."""

    def succeeded(self) -> None: ...

    def failed(self) -> None: ...


class LocalGuard:
    """The rate limit and breaker of one target, in this process only."""

    def __init__(self, limiter: TokenBucket | None, breaker: CircuitBreaker | None) -> None:
        self.limiter = limiter
        self.breaker = breaker

    def admit(self, max_wait: float) -> None:
        if self.breaker is not None:
            self.breaker.before_call()
        if self.limiter is not None:
            self.limiter.acquire(max_wait)

    def succeeded(self) -> None:
        if self.breaker is not None:
            self.breaker.succeeded()

    def failed(self) -> None:
        if self.breaker is not None:
            self.breaker.failed()


class GuardedFhirClient:
    """A ``FhirClient`` that goes through the target's guard (rate limit and circuit breaker)."""

    def __init__(
        self, inner: FhirClient, guard: TargetGuard, *, max_wait: float = MAX_WAIT, admit: bool = True
    ) -> None:
        """``admit=False`` when ``inner`` admits each request itself (``HttpFhirClient(before_send=...)``)."""
        self.inner = inner
        self.guard = guard
        self.max_wait = max_wait
        self._admit = admit

    def _call(self, fn: Callable[[], T]) -> T:
        if self._admit:
            self.guard.admit(self.max_wait)
        try:
            result = fn()
        except RetryableError:
            self.guard.failed()
            raise
        except Exception:
            self.guard.succeeded()  # the target answered: it is up, the request was the problem
            raise
        self.guard.succeeded()
        return result

    def read(self, resource_type: str, resource_id: str) -> FhirResponse:
        return self._call(lambda: self.inner.read(resource_type, resource_id))

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> FhirResponse:
        return self._call(lambda: self.inner.vread(resource_type, resource_id, version_id))

    def search(self, resource_type: str, params: Mapping[str, str]) -> dict[str, Any]:
        return self._call(lambda: self.inner.search(resource_type, params))

    def versions(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        return self._call(lambda: self.inner.versions(resource_type, resource_id))

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> FhirResponse:
        return self._call(lambda: self.inner.create(resource, if_none_exist=if_none_exist))

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> FhirResponse:
        return self._call(lambda: self.inner.update(resource, if_match=if_match))

    def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Sequence[dict[str, Any]],
        *,
        if_match: str | None = None,
    ) -> FhirResponse:
        return self._call(lambda: self.inner.patch(resource_type, resource_id, operations, if_match=if_match))

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        return self._call(lambda: self.inner.transaction(bundle))
