"""One contract suite for ``RetentionState`` (the payload purge's cursor and due changes), against the fake and
Azurite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.table_retention_state import TableRetentionState
from shared.core.change_ids import new_change_id
from shared.core.models import RetentionCursor
from shared.core.ports import RetentionState
from shared.fakes.stores import FakeRetentionState
from tests.contract.tables import FAKE_OR_AZURITE, fake_or_table

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(params=FAKE_OR_AZURITE)
def state(request: pytest.FixtureRequest) -> RetentionState:
    return fake_or_table(request, FakeRetentionState, TableRetentionState)


def test_the_cursor_starts_empty_and_keeps_the_last_value(state: RetentionState) -> None:
    assert state.cursor() is None
    state.advance(RetentionCursor(next_id="", full_pass_below=NOW))
    assert state.cursor() == RetentionCursor(next_id="", full_pass_below=NOW)
    state.advance(RetentionCursor(next_id="0190-some-id"))
    assert state.cursor() == RetentionCursor(next_id="0190-some-id")


def test_only_due_changes_are_listed_earliest_first(state: RetentionState) -> None:
    ids = [new_change_id(NOW) for _ in range(4)]
    state.schedule(ids[0], NOW + timedelta(days=2))
    state.schedule(ids[1], NOW - timedelta(days=1))
    state.schedule(ids[2], NOW)
    state.schedule(ids[3], NOW + timedelta(milliseconds=1))
    state.schedule(ids[1], NOW - timedelta(days=1))  # the same again: one entry

    due = state.due(NOW)

    assert [(e.change_id, e.due) for e in due] == [(ids[1], NOW - timedelta(days=1)), (ids[2], NOW)]
    assert [e.change_id for e in state.due(NOW, limit=1)] == [ids[1]]
    assert [e.change_id for e in state.due(NOW + timedelta(days=3))] == [ids[1], ids[2], ids[3], ids[0]]


def test_done_forgets_one_entry_and_gone_is_fine(state: RetentionState) -> None:
    change_id = new_change_id(NOW)
    state.schedule(change_id, NOW - timedelta(hours=1))
    state.schedule(change_id, NOW + timedelta(hours=1))  # looked at again later: a second entry
    (first,) = state.due(NOW)
    state.done(first)
    state.done(first)
    assert state.due(NOW) == []
    assert [e.due for e in state.due(NOW + timedelta(hours=2))] == [NOW + timedelta(hours=1)]
