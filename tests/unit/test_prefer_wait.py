"""``Prefer: wait=N`` (RFC 7240) and ``Retry-After`` by state, on the change API over the fakes."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest

from shared.api.caller_identity import ROLE_AUDIT, encode_easyauth_principal
from shared.api.prefer import MAX_WAIT_SECONDS, requested_wait
from shared.api.waiting import ChangeWaiter
from shared.app.journal import ChangeJournal, Step
from shared.bootstrap import Gateway
from shared.core.errors import StorageUnavailableError
from shared.core.models import ChangeRecord, ChangeStatus
from tests.fake_gateway import fake_gateway, with_change_awaiting_approval
from tests.records import a_change_record

AT = datetime(2026, 12, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Prefer": "wait=5"}, 5),
        ({"prefer": "respond-async, wait=7"}, 7),
        ({"Prefer": 'WAIT="9"'}, 9),
        ({"Prefer": "wait=10; x=y"}, 10),
        ({"Prefer": f"wait={MAX_WAIT_SECONDS + 100}"}, MAX_WAIT_SECONDS),
        ({"Prefer": "wait=3, wait=8"}, 3),
        ({"Prefer": "wait=soon"}, None),
        ({"Prefer": "wait=-1"}, None),
        ({"Prefer": "return=minimal"}, None),
        ({}, None),
    ],
)
def test_the_wait_preference_is_read_as_rfc_7240_says(headers: dict[str, str], wait: int | None) -> None:
    assert requested_wait(headers) == wait


def auditor_headers(**extra: str) -> dict[str, str]:
    return {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("auditor", [ROLE_AUDIT], user_id="a1"), **extra}


def running_change(gateway: Gateway, change_id: str = "c1") -> ChangeRecord:
    return gateway.journal.open(a_change_record(change_id, status=ChangeStatus.ACCEPTED, at=AT), Step("accepted"))


def test_retry_after_is_1_while_running_and_minutes_while_awaiting_a_person() -> None:
    gw = fake_gateway()
    running_change(gw, "run")
    with_change_awaiting_approval(gw, AT, "wait")
    running = gw.changes_api.get_change(auditor_headers(), "run", "http://gw")
    waiting = gw.changes_api.get_change(auditor_headers(), "wait", "http://gw")
    assert (running.status, running.headers["Retry-After"]) == (202, "1")
    assert waiting.status == 202 and int(waiting.headers["Retry-After"]) >= 60


def test_a_wait_answers_200_as_soon_as_the_change_ends() -> None:
    gw = fake_gateway()
    record = running_change(gw)

    def finish() -> None:
        time.sleep(0.2)
        gw.journal.record(record, [Step("completed")], status=ChangeStatus.COMPLETED)

    threading.Thread(target=finish).start()
    started = time.monotonic()
    answer = asyncio.run(gw.changes_api.get_change_and_wait(auditor_headers(Prefer="wait=10"), "c1", "http://gw"))
    elapsed = time.monotonic() - started
    assert answer.status == 200 and answer.body["status"] == "completed"
    assert answer.headers["Preference-Applied"] == "wait=10" and answer.headers["Vary"] == "Prefer"
    assert elapsed < 2


def test_a_wait_that_runs_out_answers_the_202_of_today() -> None:
    gw = fake_gateway()
    running_change(gw)
    started = time.monotonic()
    answer = asyncio.run(gw.changes_api.get_change_and_wait(auditor_headers(Prefer="wait=1"), "c1", "http://gw"))
    assert 0.9 < time.monotonic() - started < 3
    assert answer.status == 202 and answer.headers["Retry-After"] == "1"
    assert answer.headers["Preference-Applied"] == "wait=1"


def test_no_wait_for_a_change_awaiting_a_person_or_an_error() -> None:
    gw = fake_gateway()
    with_change_awaiting_approval(gw, AT)
    started = time.monotonic()
    answer = asyncio.run(gw.changes_api.get_change_and_wait(auditor_headers(Prefer="wait=20"), "c1", "http://gw"))
    missing = asyncio.run(gw.changes_api.get_change_and_wait(auditor_headers(Prefer="wait=20"), "nope", "http://gw"))
    assert time.monotonic() - started < 1
    assert answer.status == 202 and answer.body["status"] == "awaiting_approval"
    assert missing.status == 404 and "Preference-Applied" not in missing.headers


def test_a_status_read_failing_during_the_wait_answers_the_202_not_an_error() -> None:
    gw = fake_gateway()
    running_change(gw)

    def unavailable(change_id: str) -> ChangeRecord:
        raise StorageUnavailableError(detail="storage did not answer")

    gw.changes_api._waiter = ChangeWaiter(unavailable)
    answer = asyncio.run(gw.changes_api.get_change_and_wait(auditor_headers(Prefer="wait=5"), "c1", "http://gw"))
    assert answer.status == 202 and answer.headers["Retry-After"] == "1"


def test_a_change_settled_in_this_process_wakes_the_wait_before_its_next_read() -> None:
    """The hint only wakes the wait early; the answer still comes from storage. A change settled by another process
    (another journal: no hint) is found at the next scheduled read."""
    for same_process, bound in ((True, 1.0), (False, 10.0)):
        gw = fake_gateway()
        record = running_change(gw)
        gw.changes_api._waiter = ChangeWaiter(gw.journal.store.get, signals=gw.journal.signals, first_poll=3.0)
        recorder = gw.journal if same_process else ChangeJournal(gw.journal.store)

        def finish(recorder: ChangeJournal = recorder, record: ChangeRecord = record) -> None:
            time.sleep(0.2)
            recorder.record(record, [Step("completed")], status=ChangeStatus.COMPLETED)

        threading.Thread(target=finish).start()
        started = time.monotonic()
        answer = asyncio.run(gw.changes_api.get_change_and_wait(auditor_headers(Prefer="wait=10"), "c1", "http://gw"))
        elapsed = time.monotonic() - started
        assert answer.status == 200, same_process
        assert elapsed < bound and (same_process or elapsed >= 2.9), (same_process, elapsed)
