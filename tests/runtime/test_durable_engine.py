"""Conformance of the local Durable engine: the real SDK replayed over SQLite history."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.app_index import load_app
from devhost.durable.engine import DurableEngine, InstanceExistsError, InstanceGoneError, InstanceNotFoundError

APPS = Path(__file__).parent / "apps"


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    path.write_text("")
    monkeypatch.setenv("DURABLE_SAMPLE_CALLS", str(path))
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(tmp_path: Path, calls: Path, clock: Clock) -> Iterator[DurableEngine]:
    index = load_app("durable_sample_app", APPS)
    eng = DurableEngine(index, tmp_path / "durable.db", clock=clock, activity_workers=4)
    eng.start()
    yield eng
    eng.stop()


def test_sequence_of_activities_completes_with_custom_status(engine: DurableEngine) -> None:
    iid = engine.start_instance("hello_sequence", "seq-1", json.dumps(["A", "B"]))
    body = engine.wait_for(iid)
    assert body["runtimeStatus"] == "Completed"
    assert body["output"] == ["Hello A!", "Hello B!"]
    assert body["customStatus"] == {"step": 1}
    assert body["input"] == ["A", "B"]


def test_fan_out_fan_in(engine: DurableEngine) -> None:
    names = [f"n{i}" for i in range(20)]
    body = engine.wait_for(engine.start_instance("fan_out", None, json.dumps(names)))
    assert body["output"] == [f"Hello {n}!" for n in names]


def test_retry_succeeds_on_third_attempt(engine: DurableEngine, calls: Path) -> None:
    body = engine.wait_for(
        engine.start_instance("with_retry", None, json.dumps({"key": "k1", "fail": 2, "attempts": 3}))
    )
    assert body["runtimeStatus"] == "Completed", body
    assert body["output"] == {"result": "ok after 3", "after": "Hello after!"}
    assert calls.read_text().count("flaky:k1\n") == 3


def test_retry_gives_up_after_max_attempts(engine: DurableEngine, calls: Path) -> None:
    body = engine.wait_for(
        engine.start_instance("with_retry", None, json.dumps({"key": "k2", "fail": 9, "attempts": 2}))
    )
    assert body["runtimeStatus"] == "Completed", body
    assert "flaky failure 2" in body["output"]["failed"]
    assert calls.read_text().count("flaky:k2\n") == 2


def test_external_event_wins_the_race_and_the_timer_is_cancelled(engine: DurableEngine) -> None:
    iid = engine.start_instance("approval", None, json.dumps(30))
    engine.wait_for(iid, statuses=frozenset({"Running"}))
    engine.raise_event(iid, "approve", json.dumps("yes"))
    body = engine.wait_for(iid)
    assert body["output"] == {"decision": "yes"}
    with engine.store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM inbox WHERE instance_id = ?", (iid,)).fetchone()[0] == 0


def test_event_raised_before_the_orchestrator_waits_is_buffered(engine: DurableEngine) -> None:
    engine.stop()  # nothing runs: the event arrives while the instance is still pending
    iid = engine.start_instance("approval", None, json.dumps(30))
    engine.raise_event(iid, "approve", json.dumps("early"))
    engine.start()
    assert engine.wait_for(iid)["output"] == {"decision": "early"}


def test_deadline_timer_wins_without_a_decision(engine: DurableEngine) -> None:
    body = engine.wait_for(engine.start_instance("approval", None, json.dumps(0.2)))
    assert body["output"] == {"decision": "expired"}


def test_ten_day_timer_fires_when_the_clock_gets_there(engine: DurableEngine, clock: Clock) -> None:
    iid = engine.start_instance("long_timer", None, None)
    engine.wait_for(iid, statuses=frozenset({"Running"}))
    # The SDK splits 10 days into 3-day intervals (+3 d, +6 d) and then the last stretch (+10 d).
    for _ in range(3):
        time.sleep(0.2)
        assert engine.status(iid)["runtimeStatus"] == "Running"  # type: ignore[index]
        clock.offset += 3 * 86400 + 1
        engine._notify()
    time.sleep(0.2)
    assert engine.status(iid)["runtimeStatus"] == "Running"  # type: ignore[index]
    clock.offset += 86400
    engine._notify()
    assert engine.wait_for(iid)["output"] == "fired"
    history = engine.status(iid, show_history=True)["historyEvents"]  # type: ignore[index]
    assert [e["EventType"] for e in history].count("TimerFired") == 3


def test_sub_orchestrations_complete_and_fail_into_the_parent(engine: DurableEngine) -> None:
    body = engine.wait_for(engine.start_instance("parent", "p-1", None))
    assert body["runtimeStatus"] == "Completed", body
    assert body["output"]["child"] == ["Hello a!", "Hello b!"]
    assert "orchestrator exploded" in body["output"]["failure"]
    assert engine.status("p-1:0")["runtimeStatus"] == "Completed"  # type: ignore[index]


def test_orchestrator_exception_fails_the_instance_with_its_message(engine: DurableEngine) -> None:
    body = engine.wait_for(engine.start_instance("failing", None, None))
    assert body["runtimeStatus"] == "Failed"
    assert "orchestrator exploded" in body["output"]


def test_continue_as_new_restarts_with_new_input(engine: DurableEngine, calls: Path) -> None:
    body = engine.wait_for(engine.start_instance("counter", "c-1", json.dumps(0)))
    assert body["runtimeStatus"] == "Completed" and body["output"] == 3
    assert [line for line in calls.read_text().splitlines() if line.startswith("say_hello:n=")] == [
        "say_hello:n=0",
        "say_hello:n=1",
        "say_hello:n=2",
        "say_hello:n=3",
    ]


def test_non_determinism_fails_the_instance_loudly(engine: DurableEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    iid = engine.start_instance("wobbly", None, None)
    deadline = time.time() + 5
    while "say_hello" not in json.dumps(engine.status(iid, show_history=True)):
        assert time.time() < deadline
        time.sleep(0.02)
    monkeypatch.setenv("WOBBLY_FIRST", "slow")
    engine.raise_event(iid, "go", None)
    body = engine.wait_for(iid)
    assert body["runtimeStatus"] == "Failed"
    assert "Non-deterministic workflow detected" in body["output"]


def test_start_existing_running_instance_is_refused_but_a_finished_one_restarts(engine: DurableEngine) -> None:
    iid = engine.start_instance("approval", "dup-1", json.dumps(30))
    with pytest.raises(InstanceExistsError):
        engine.start_instance("approval", "dup-1", json.dumps(30))
    engine.terminate(iid, "test")
    assert engine.wait_for(iid)["runtimeStatus"] == "Terminated"
    with pytest.raises(InstanceGoneError):
        engine.raise_event(iid, "approve", None)
    engine.start_instance("hello_sequence", "dup-1", json.dumps(["again"]))
    assert engine.wait_for(iid)["output"] == ["Hello again!"]


def test_unknown_instances_and_purge(engine: DurableEngine) -> None:
    assert engine.status("nope") is None
    with pytest.raises(InstanceNotFoundError):
        engine.raise_event("nope", "x", None)
    iid = engine.start_instance("hello_sequence", None, None)
    engine.wait_for(iid)
    assert [s["instanceId"] for s in engine.query(["Completed"], None, None, None)] == [iid]
    assert engine.purge(iid) == 1
    assert engine.status(iid) is None


def test_state_survives_reopening_the_database(tmp_path: Path, calls: Path, clock: Clock) -> None:
    index = load_app("durable_sample_app", APPS)
    first = DurableEngine(index, tmp_path / "d.db", clock=clock)
    first.start()
    iid = first.start_instance("approval", None, json.dumps(60))
    first.wait_for(iid, statuses=frozenset({"Running"}))
    first.stop()
    first.store.close()
    second = DurableEngine(index, tmp_path / "d.db", clock=clock)
    second.start()
    try:
        second.raise_event(iid, "approve", json.dumps("after restart"))
        assert second.wait_for(iid)["output"] == {"decision": "after restart"}
    finally:
        second.stop()
