"""NCRONTAB schedules (parsing, errors, next occurrences, NCrontab's AND of day of month and day of week) and the
timer pump: the TimerRequest a function gets, the schedule monitor's past-due run after downtime, runOnStartup,
failures that do not stop the schedule, and no overlap of an occurrence with the previous one.

The pump tests drive time with an injected clock and ``run_due()``; one test runs the background threads on a
one-second schedule.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from azure.functions.timer import TimerRequest

from devhost.app_index import AppIndex
from devhost.servicebus_trigger import BindingConfigurationError
from devhost.timers import CronSchedule, IntervalSchedule, ScheduleError, TimerPump, parse_ncrontab
from tests.runtime.sample_apps import only

SAMPLE_APP = "devhost_sample_timer_app"  # the app of the conftest fixtures `full_index` and `sample`
BASE = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)  # a Thursday


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- parsing and next occurrences ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * * *", "2026-01-01T00:00:00", ["00:00:05", "00:00:10", "00:00:15"]),
        ("0 */5 * * * *", "2026-01-01T00:00:00", ["00:05:00", "00:10:00", "00:15:00"]),
        ("0 0 * * * *", "2026-01-01T00:59:59", ["01:00:00", "02:00:00", "03:00:00"]),
        ("1-10/4 * * * * *", "2026-01-01T00:00:00", ["00:00:01", "00:00:05", "00:00:09"]),
        ("5/20 * * * * *", "2026-01-01T00:00:00", ["00:00:05", "00:00:25", "00:00:45"]),
        ("0 15,45 9 * * *", "2026-01-01T09:20:00", ["09:45:00", "+1 09:15:00", "+1 09:45:00"]),
        ("0 0 23 * * *", "2026-12-31T23:00:00", ["2027-01-01T23:00:00", "2027-01-02T23:00:00"]),
        ("0 30 9 * * Mon-Fri", "2026-01-01T10:00:00", ["2026-01-02T09:30:00", "2026-01-05T09:30:00"]),
        ("0 0 0 * * 0", "2026-01-01T00:00:00", ["2026-01-04T00:00:00", "2026-01-11T00:00:00"]),
        ("0 0 0 * * sun,SATURDAY", "2026-01-01T00:00:00", ["2026-01-03T00:00:00", "2026-01-04T00:00:00"]),
        ("0 0 12 1 jan,Jul *", "2026-01-01T12:00:00", ["2026-07-01T12:00:00", "2027-01-01T12:00:00"]),
        ("0 0 0 31 * *", "2026-01-31T00:00:00", ["2026-03-31T00:00:00", "2026-05-31T00:00:00"]),
        ("0 0 0 29 Feb *", "2026-01-01T00:00:00", ["2028-02-29T00:00:00", "2032-02-29T00:00:00"]),
        # day of month AND day of week, as NCrontab: Friday the 13th
        (
            "0 0 0 13 * Fri",
            "2026-01-01T00:00:00",
            ["2026-02-13T00:00:00", "2026-03-13T00:00:00", "2026-11-13T00:00:00"],
        ),
        ("0 0 0 1-7 * Mon", "2026-01-01T00:00:00", ["2026-01-05T00:00:00", "2026-02-02T00:00:00"]),
        ("59 59 23 31 12 *", "2026-12-31T23:59:59", ["2027-12-31T23:59:59"]),
        ("00:05:00", "2026-01-01T00:00:30", ["00:05:30", "00:10:30"]),
        ("1.02:03:04", "2026-01-01T00:00:00", ["2026-01-02T02:03:04"]),
        ("00:00:00.5", "2026-01-01T00:00:00", ["2026-01-01T00:00:00.500000", "2026-01-01T00:00:01"]),
    ],
)
def test_next_occurrences(expression: str, after: str, expected: list[str]) -> None:
    base = at(after)

    def resolve(text: str) -> datetime:
        if text.startswith("+1 "):
            return at(f"{base.date() + timedelta(days=1)}T{text[3:]}")
        return at(text) if "T" in text else at(f"{base.date()}T{text}")

    assert parse_ncrontab(expression).occurrences(base, len(expected)) == [resolve(e) for e in expected]


def test_the_next_occurrence_is_strictly_after_the_given_time() -> None:
    schedule = parse_ncrontab("0 * * * * *")
    assert schedule.next_after(at("2026-01-01T10:00:00")) == at("2026-01-01T10:01:00")
    assert schedule.next_after(at("2026-01-01T10:00:59.999")) == at("2026-01-01T10:01:00")


def test_other_time_zones_are_converted_and_naive_times_refused() -> None:
    schedule = parse_ncrontab("0 0 9 * * *")
    plus_two = datetime(2026, 1, 1, 10, 0, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Helsinki"))
    assert schedule.next_after(plus_two) == at("2026-01-02T09:00:00")
    with pytest.raises(ValueError, match="timezone"):
        schedule.next_after(datetime(2026, 1, 1))


def test_parsed_kinds() -> None:
    cron = parse_ncrontab("  0 0 9 * * Mon  ")
    assert isinstance(cron, CronSchedule)
    assert cron.days_of_week == frozenset({1})
    interval = parse_ncrontab("00:05:00")
    assert isinstance(interval, IntervalSchedule) and interval.interval == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("* * * * *", "6 fields"),
        ("* * * * * * *", "6 fields"),
        ("60 * * * * *", "second field '60': 60 is out of range 0-59"),
        ("* 60 * * * *", "minute field"),
        ("* * 24 * * *", "hour field"),
        ("* * * 0 * *", "day field '0'"),
        ("* * * * 13 *", "month field"),
        ("* * * * * 7", "day-of-week field '7': 7 is out of range 0-6"),
        ("*/0 * * * * *", "step '0'"),
        ("*/x * * * * *", "step 'x'"),
        ("5-1 * * * * *", "runs backwards"),
        ("1,,2 * * * * *", "empty list element"),
        ("* * * * Foo *", "name such as Jan"),
        ("* * * * * Mo", "'Mo' is not"),
        ("Mon * * * * *", "'Mon' is not a number 0-59"),
        ("0 0 0 30 Feb *", "never occurs"),
        ("00:60:00", "out of range"),
        ("00:00:00", "longer than zero"),
        ("every 5 minutes", "neither"),
        ("-00:05:00", "not a TimeSpan"),
    ],
)
def test_invalid_expressions_are_refused_clearly(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("*", r"\*")):
        parse_ncrontab(expression)


def test_sub_minute_schedules_are_recognised_as_the_host_does() -> None:
    # the host counts occurrences in (now, now + 1 min): exactly on a boundary, */30 has only one
    assert not parse_ncrontab("*/30 * * * * *").fires_more_than_once_a_minute(BASE)
    assert parse_ncrontab("*/30 * * * * *").fires_more_than_once_a_minute(BASE + timedelta(seconds=10))
    assert not parse_ncrontab("0 * * * * *").fires_more_than_once_a_minute(BASE)
    assert parse_ncrontab("00:00:59").fires_more_than_once_a_minute(BASE)
    assert not parse_ncrontab("00:01:00").fires_more_than_once_a_minute(BASE)


# --- the pump -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def set(self, text: str) -> None:
        self.now = at(text)


@pytest.fixture(autouse=True)
def schedule_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMPLE_TIMER_SCHEDULE", "0 * * * * *")


def pump_for(index: AppIndex, tmp_path: Path, clock: Callable[[], datetime], *names: str) -> TimerPump:
    pump = TimerPump(only(index, *names), state_db=tmp_path / "timers.db", clock=clock)
    pump.start(background=False)
    return pump


def test_a_due_timer_gets_a_timer_request_with_its_schedule_status(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    clock = Clock(at("2026-01-01T10:00:30"))
    pump = pump_for(full_index, tmp_path, clock, "monitored")
    assert pump.run_due() == []
    clock.set("2026-01-01T10:01:00")
    assert pump.run_due() == ["monitored"]
    assert pump.run_due() == []  # the same occurrence runs once
    clock.set("2026-01-01T10:02:00")
    assert pump.run_due() == ["monitored"]
    pump.stop()
    first, second = sample.CALLS["monitored"]
    assert first["type"] is TimerRequest
    assert first["past_due"] is False
    assert first["schedule"] == {"AdjustForDST": False}
    assert first["schedule_status"] == {
        "Last": "0001-01-01T00:00:00",
        "Next": "2026-01-01T10:01:00+00:00",
        "LastUpdated": "2026-01-01T10:00:30+00:00",
    }
    assert second["schedule_status"] == {
        "Last": "2026-01-01T10:01:00+00:00",
        "Next": "2026-01-01T10:02:00+00:00",
        "LastUpdated": "2026-01-01T10:01:00+00:00",
    }


def ran_once_then_stopped(index: AppIndex, tmp_path: Path, name: str) -> Clock:
    """Run timer ``name``'s 10:01 occurrence on a pump started at 10:00:30, then stop the pump; its clock."""
    clock = Clock(at("2026-01-01T10:00:30"))
    pump = pump_for(index, tmp_path, clock, name)
    clock.set("2026-01-01T10:01:00")
    assert pump.run_due() == [name]
    pump.stop()
    return clock


def test_an_occurrence_missed_while_down_runs_once_past_due(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    clock = ran_once_then_stopped(full_index, tmp_path, "monitored")
    clock.set("2026-01-01T10:05:30")  # down for several occurrences
    pump = pump_for(full_index, tmp_path, clock, "monitored")
    assert pump.run_due() == ["monitored"]
    assert pump.run_due() == []  # once, not once per missed occurrence
    clock.set("2026-01-01T10:06:00")
    assert pump.run_due() == ["monitored"]
    pump.stop()

    _, missed, regular = sample.CALLS["monitored"]
    assert missed["past_due"] is True
    assert missed["schedule_status"]["Last"] == "2026-01-01T10:01:00+00:00"
    assert missed["schedule_status"]["Next"] == "2026-01-01T10:02:00+00:00"
    assert regular["past_due"] is False
    assert regular["schedule_status"]["Last"] == "2026-01-01T10:05:30+00:00"


def test_a_restart_before_the_next_occurrence_is_not_past_due(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    clock = Clock(at("2026-01-01T10:00:30"))
    pump_for(full_index, tmp_path, clock, "monitored").stop()
    clock.set("2026-01-01T10:00:50")
    pump = pump_for(full_index, tmp_path, clock, "monitored")
    assert pump.run_due() == []
    pump.stop()
    assert "monitored" not in sample.CALLS


def test_a_changed_schedule_is_not_reported_as_past_due(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ran_once_then_stopped(full_index, tmp_path, "monitored")
    monkeypatch.setenv("SAMPLE_TIMER_SCHEDULE", "0 0 * * * *")  # hourly now
    clock.set("2026-01-01T10:05:00")
    pump = pump_for(full_index, tmp_path, clock, "monitored")
    assert pump.run_due() == []
    assert pump.timers["monitored"].next == at("2026-01-01T11:00:00")
    pump.stop()


def test_without_the_monitor_downtime_is_forgotten_and_no_status_is_passed(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    clock = ran_once_then_stopped(full_index, tmp_path, "unmonitored")
    clock.set("2026-01-01T10:05:30")
    pump = pump_for(full_index, tmp_path, clock, "unmonitored")
    assert pump.run_due() == []
    pump.stop()
    [call] = sample.CALLS["unmonitored"]
    assert call["schedule_status"] == {}
    assert call["past_due"] is False


def test_run_on_startup_runs_once_at_start(full_index: AppIndex, sample: ModuleType, tmp_path: Path) -> None:
    clock = Clock(at("2026-03-01T10:00:00"))
    pump = pump_for(full_index, tmp_path, clock, "on_startup")
    assert pump.run_due() == ["on_startup"]
    assert pump.run_due() == []
    pump.stop()
    [call] = sample.CALLS["on_startup"]
    assert call["past_due"] is False
    assert pump.timers == {}


def test_a_failing_timer_is_logged_and_its_schedule_goes_on(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devhost.timers")
    clock = Clock(at("2026-01-01T10:00:30"))
    pump = pump_for(full_index, tmp_path, clock, "failing")
    clock.set("2026-01-01T10:05:00")
    assert pump.run_due() == ["failing"]
    assert pump.timers["failing"].next == at("2026-01-01T10:10:00")
    clock.set("2026-01-01T10:10:00")
    assert pump.run_due() == ["failing"]
    pump.stop()
    assert len(sample.CALLS["failing"]) == 2
    assert "failing" in caplog.text and "ValueError" in caplog.text


def test_an_occurrence_never_overlaps_the_previous_one(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    clock = Clock(at("2026-01-01T10:00:30"))
    pump = pump_for(full_index, tmp_path, clock, "slow")
    clock.set("2026-01-01T10:01:00")
    runner = threading.Thread(target=pump.run_due)
    runner.start()
    assert sample.SLOW_STARTED.wait(5)
    clock.set("2026-01-01T10:02:00")
    assert pump.run_due() == []  # still running the 10:01 occurrence
    sample.RELEASE_SLOW.set()
    runner.join(5)
    assert pump.timers["slow"].next == at("2026-01-01T10:02:00")
    assert pump.run_due() == ["slow"]  # the missed one runs once, right after
    pump.stop()
    assert len(sample.CALLS["slow"]) == 2


def test_bad_bindings_fail_at_start(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAMPLE_TIMER_SCHEDULE")
    with pytest.raises(BindingConfigurationError, match="SAMPLE_TIMER_SCHEDULE"):
        pump_for(full_index, tmp_path, Clock(BASE), "monitored")
    monkeypatch.setenv("SAMPLE_TIMER_SCHEDULE", "0 0 0 31 Apr *")
    with pytest.raises(ScheduleError, match="monitored"):
        pump_for(full_index, tmp_path, Clock(BASE), "monitored")


def test_background_threads_run_a_one_second_schedule(full_index: AppIndex, sample: ModuleType, tmp_path: Path) -> None:
    pump = TimerPump(only(full_index, "every_second_flaky"), state_db=tmp_path / "timers.db")
    pump.start()
    try:
        deadline = time.monotonic() + 3
        while len(sample.CALLS.get("every_second_flaky", [])) < 2:
            assert time.monotonic() < deadline, "the timer did not fire twice"
            time.sleep(0.02)
    finally:
        started = time.monotonic()
        pump.stop()
        assert time.monotonic() - started < 1
    calls = sample.CALLS["every_second_flaky"]
    assert all(c["past_due"] is False and c["schedule_status"] == {} for c in calls)  # sub-minute: no monitor
    with sqlite3.connect(tmp_path / "timers.db") as db:  # the file holds the timer's lease, and no status
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'timer_status'").fetchone() is None
