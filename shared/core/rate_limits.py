"""The generic cell rate algorithm (GCRA), a token bucket kept as one number: the theoretical arrival time (TAT).

A caller may send ``rate`` requests per second on average and ``burst`` at once. Each admitted request moves the TAT
on by ``1 / rate`` from ``max(TAT, now)``; a request is refused when the TAT is more than ``(burst - 1) / rate``
ahead of now, and may come back when it no longer is. The TAT only moves forward, so a copy read earlier is never
ahead of the stored one: a refusal decided on it holds (no write needed), an admission must be written
conditionally. (The algorithm of ITU-T Recommendation I.371, in its "virtual scheduling" form.)
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.core.errors import RateLimitedError


@dataclass(frozen=True)
class Gcra:
    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    def admit(self, tat: float, now: float) -> float:
        """The TAT after admitting a request at ``now``; RateLimitedError when it must wait."""
        start = max(tat, now)
        ahead = start - now - (self.burst - 1) * self.interval
        if ahead > 0:
            raise RateLimitedError(
                f"More than {self.rate:g} requests per second (bursts of {self.burst}) from this caller",
                retry_after=ahead,
            )
        return start + self.interval
