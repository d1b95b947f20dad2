"""One contract suite for ``SweepState`` (the sweeper's cursor and pending marks), against the fake and Azurite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.table_sweep_state import TableSweepState
from shared.core.change_ids import new_change_id
from shared.core.ports import SweepState
from shared.fakes.stores import FakeSweepState
from tests.contract.tables import FAKE_OR_AZURITE, fake_or_table

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(params=FAKE_OR_AZURITE)
def state(request: pytest.FixtureRequest) -> SweepState:
    return fake_or_table(request, FakeSweepState, TableSweepState)


def test_the_cursor_starts_empty_and_keeps_the_last_value(state: SweepState) -> None:
    assert state.cursor() is None
    state.advance(NOW)
    assert state.cursor() == NOW
    state.advance(NOW - timedelta(minutes=5))  # last write wins: a lower cursor only means more to read
    assert state.cursor() == NOW - timedelta(minutes=5)


def test_marks_are_listed_oldest_id_first_and_marking_again_is_one_mark(state: SweepState) -> None:
    ids = [new_change_id(NOW + timedelta(seconds=s)) for s in (3, 1, 2)]
    for cid in ids:
        state.mark_pending(cid, NOW)
    state.mark_pending(ids[0], NOW + timedelta(minutes=1))
    pending = state.pending()
    assert [e.change_id for e in pending] == sorted(ids)
    assert {e.change_id: e.marked_at for e in pending}[ids[0]] == NOW + timedelta(minutes=1)
    assert [e.change_id for e in state.pending(limit=2)] == sorted(ids)[:2]


def test_clearing_keeps_a_mark_made_again_since_it_was_read(state: SweepState) -> None:
    cid = new_change_id(NOW)
    state.mark_pending(cid, NOW)
    (read,) = state.pending()
    state.mark_pending(cid, NOW + timedelta(seconds=1))  # a second retry, meanwhile
    state.clear_pending(read)
    assert [e.change_id for e in state.pending()] == [cid]
    (fresh,) = state.pending()
    state.clear_pending(fresh)
    assert state.pending() == []
    state.clear_pending(fresh)  # already gone: fine
