"""The journal's per-process cache is a cache, never the truth: what it may answer, and for how long."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.app.journal import CACHE_TTL_SECONDS, ChangeJournal, Step
from shared.core.models import ChangeRecord, ChangeStatus
from shared.fakes.stores import FakeChangeStore
from tests.records import a_change_record
from tests.support import ManualClock

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def two_processes() -> tuple[ChangeJournal, ChangeJournal, ManualClock[float], ChangeRecord]:
    """A change opened by ``here`` (so cached there as accepted) and a second process on the same store."""
    store, ticks = FakeChangeStore(), ManualClock(100.0)
    here = ChangeJournal(store, clock=lambda: NOW, monotonic=ticks)
    elsewhere = ChangeJournal(store, clock=lambda: NOW)
    opened = here.open(a_change_record("c-1", status=ChangeStatus.ACCEPTED), Step("accepted"))
    return here, elsewhere, ticks, opened


def test_a_cached_record_in_an_expected_state_is_answered_without_a_read() -> None:
    here, elsewhere, _, _ = two_processes()
    elsewhere.record(elsewhere.load("c-1"), [Step("validating")], status=ChangeStatus.VALIDATING)
    assert here.load("c-1", expect={ChangeStatus.ACCEPTED}).status is ChangeStatus.ACCEPTED  # the cache: stale


def test_a_cached_record_in_another_state_is_read_again() -> None:
    here, elsewhere, _, _ = two_processes()
    elsewhere.record(elsewhere.load("c-1"), [Step("validating")], status=ChangeStatus.VALIDATING)
    assert here.load("c-1", expect={ChangeStatus.VALIDATING}).status is ChangeStatus.VALIDATING


def test_a_cached_record_older_than_the_ttl_is_read_again() -> None:
    here, elsewhere, ticks, _ = two_processes()
    elsewhere.record(elsewhere.load("c-1"), [Step("validating")], status=ChangeStatus.VALIDATING)
    ticks.now += CACHE_TTL_SECONDS
    assert here.load("c-1", expect={ChangeStatus.ACCEPTED}).status is ChangeStatus.VALIDATING
