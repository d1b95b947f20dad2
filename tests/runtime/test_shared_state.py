"""Two runtime parts on one state file, in one test process: an engine that starts leaves the other engine's running
activity alone; a timer fires on the pump holding its lease only, and another pump takes it over when the holder
stops or stops renewing. Plus the parsing of ``WRITEBACK_DEV_INSTANCE_GROUPS`` and the instances file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from devhost.app_index import AppIndex, load_app
from devhost.durable.engine import DurableEngine
from devhost.groups import ALL_GROUPS, InstanceGroupsError, parse_instance_groups, plan_instances
from devhost.instances import live_instances, register_instance, unregister_instance
from devhost.timers import TimerPump
from tests.runtime.sample_apps import APPS

SAMPLE_APP = "devhost_sample_timer_app"


def test_an_engine_that_starts_leaves_a_running_activity_of_another_engine_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before leases had owners, every engine reset all leases when it started, and ran the activity again."""
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv("DURABLE_SAMPLE_CALLS", str(calls))
    index = load_app("durable_sample_app", APPS)
    first = DurableEngine(index, tmp_path / "d.db", owner="first", lease_seconds=2)
    first.start()
    second = DurableEngine(index, tmp_path / "d.db", owner="second", lease_seconds=2)
    try:
        iid = first.start_instance("slow_then_hello", None, json.dumps(3))
        deadline = time.monotonic() + 10
        while "slow:start" not in calls.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second.start()  # the slow activity runs 3 s: longer than its 2 s lease, so the first engine renews it
        assert second.wait_for(iid, timeout=20)["output"] == "Hello after slow!"
    finally:
        second.stop()
        first.stop()
    lines = calls.read_text().splitlines()
    assert lines.count("slow:start:3") == 1 and lines.count("slow:end:3") == 1


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def monitored_only(full_index: AppIndex, monkeypatch: pytest.MonkeyPatch) -> AppIndex:
    monkeypatch.setenv("SAMPLE_TIMER_SCHEDULE", "0 * * * * *")
    return AppIndex(functions={"monitored": full_index.functions["monitored"]}, app=full_index.app)


def pump(index: AppIndex, tmp_path: Path, clock: Clock, owner: str, lease_seconds: float = 10) -> TimerPump:
    """A pump driven by ``run_due``: it renews no lease, so a lease it holds lasts ``lease_seconds`` of ``clock``."""
    timers = TimerPump(index, state_db=tmp_path / "timers.db", clock=clock, owner=owner, lease_seconds=lease_seconds)
    timers.start(background=False)
    return timers


def test_a_timer_fires_on_the_instance_holding_its_lease_only(
    monitored_only: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    clock = Clock()
    first, second = (pump(monitored_only, tmp_path, clock, owner, lease_seconds=3600) for owner in ("a", "b"))
    clock.now = datetime(2026, 1, 1, 10, 1, tzinfo=UTC)
    assert second.run_due() == []
    assert first.run_due() == ["monitored"]
    assert len(sample.CALLS["monitored"]) == 1
    # The holder stops: it gives the lease back, and the other pump runs the next occurrence.
    first.stop()
    clock.now = datetime(2026, 1, 1, 10, 2, tzinfo=UTC)
    assert second.run_due() == ["monitored"]
    second.stop()
    assert len(sample.CALLS["monitored"]) == 2


def test_a_holder_that_stops_renewing_loses_the_timer_when_its_lease_lapses(
    monitored_only: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    """A killed instance renews nothing: after the lease, another takes the timer, and a missed occurrence runs
    there once, past due (the schedule status is shared)."""
    clock = Clock()
    dead, survivor = pump(monitored_only, tmp_path, clock, "dead"), pump(monitored_only, tmp_path, clock, "survivor")
    clock.advance(5)
    assert survivor.run_due() == []  # 10:00:35, the lease still runs until 10:00:40
    clock.now = datetime(2026, 1, 1, 10, 1, 30, tzinfo=UTC)
    assert survivor.run_due() == ["monitored"]
    [call] = sample.CALLS["monitored"]
    assert call["past_due"] is True
    survivor.stop()
    del dead  # never stopped: as after a kill -9


def test_instance_groups_are_parsed_and_every_group_must_run_somewhere() -> None:
    assert parse_instance_groups(None) == [] and parse_instance_groups(" ") == []
    assert parse_instance_groups("http;durable,servicebus,timer") == [
        frozenset({"http"}),
        frozenset({"durable", "servicebus", "timer"}),
    ]
    assert plan_instances(2, None) == [ALL_GROUPS, ALL_GROUPS]
    assert plan_instances(1, "http;durable, ServiceBus ,timer") == [
        frozenset({"http"}),
        frozenset({"durable", "servicebus", "timer"}),
    ]
    assert plan_instances(3, "http;durable,servicebus,timer")[2] == frozenset({"http"})
    with pytest.raises(InstanceGroupsError, match="no instance runs timer"):
        parse_instance_groups("http;durable,servicebus")
    with pytest.raises(InstanceGroupsError, match="unknown group"):
        parse_instance_groups("http,blob;durable,servicebus,timer")
    with pytest.raises(InstanceGroupsError, match="no group"):
        parse_instance_groups("http;;durable,servicebus,timer")


def test_the_instances_file_drops_entries_of_dead_processes(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    register_instance(tmp_path, url="http://127.0.0.1:1", groups=["http"], index=0, owner="x", pid=dead_pid)
    assert live_instances(tmp_path) == []  # readers ignore it
    register_instance(tmp_path, url="http://127.0.0.1:2", groups=["timer"], index=1, owner="me")
    written = json.loads((tmp_path / "instances.json").read_text())
    assert [e["pid"] for e in written] == [os.getpid()]  # writers drop it
    unregister_instance(tmp_path)
    assert json.loads((tmp_path / "instances.json").read_text()) == []
