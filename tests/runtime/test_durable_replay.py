"""The public replay API (``devhost.durable.replay``): one episode of a real orchestrator through the SDK."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devhost.app_index import load_app
from devhost.durable.history import ActionType, EventType, event
from devhost.durable.replay import OrchestratorHandler, episode_context, replay_episode

APPS = Path(__file__).parent / "apps"
AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def handlers() -> dict[str, OrchestratorHandler]:
    functions = load_app("durable_sample_app", APPS).functions
    return {name: functions[name].func for name in ("hello_sequence", "fan_out", "failing")}


def started(name: str, orchestration_input: Any) -> list[dict[str, Any]]:
    """The first episode's events: OrchestratorStarted and ExecutionStarted."""
    return [
        event(EventType.ORCHESTRATOR_STARTED, AT),
        event(EventType.EXECUTION_STARTED, AT, Name=name, Version="", Input=json.dumps(orchestration_input)),
    ]


def next_episode(
    history: list[dict[str, Any]], received: list[dict[str, Any]], scheduled: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The played history after an episode that received ``received`` and scheduled the activities ``scheduled``
    (task ids numbered on from the ones already in the history), and the next episode's OrchestratorStarted."""
    first_id = sum(1 for e in history if e["EventType"] == EventType.TASK_SCHEDULED)
    recorded = [
        *received,
        *(event(EventType.TASK_SCHEDULED, AT, first_id + i, Name=name) for i, name in enumerate(scheduled)),
        event(EventType.ORCHESTRATOR_COMPLETED, AT),
    ]
    played = [{**e, "IsPlayed": True} for e in history + recorded]
    return played, [event(EventType.ORCHESTRATOR_STARTED, AT)]


def completed(task_id: int, result: Any) -> dict[str, Any]:
    return event(EventType.TASK_COMPLETED, AT, TaskScheduledId=task_id, Result=json.dumps(result))


def test_a_sequence_schedules_one_activity_per_episode_and_completes(
    handlers: dict[str, OrchestratorHandler],
) -> None:
    handler = handlers["hello_sequence"]
    received = started("hello_sequence", ["A", "B"])

    first = replay_episode(handler, episode_context([], received, json.dumps(["A", "B"]), "seq-1"))
    assert first.error is None
    assert [(a.action_type, a.name) for a in first.actions] == [(ActionType.CALL_ACTIVITY, "say_hello")]
    assert json.loads(first.actions[0].raw["input"]) == "A"
    assert (first.is_done, first.output, first.custom_status) == (False, None, {"step": 0})

    played, received = next_episode([], received, ["say_hello"])
    received.append(completed(0, "Hello A!"))
    second = replay_episode(handler, episode_context(played, received, json.dumps(["A", "B"]), "seq-1"))
    # the SDK answers with every action so far: the replayed one first, then the new one
    assert [a.name for a in second.actions] == ["say_hello", "say_hello"]
    assert json.loads(second.actions[1].raw["input"]) == "B"
    assert (second.is_done, second.custom_status) == (False, {"step": 1})

    played, received = next_episode(played, received, ["say_hello"])
    received.append(completed(1, "Hello B!"))
    context = json.dumps(episode_context(played, received, json.dumps(["A", "B"]), "seq-1"))  # encoded beforehand
    last = replay_episode(handler, context)
    assert len(last.actions) == 2
    assert (last.is_done, last.output, last.error) == (True, ["Hello A!", "Hello B!"], None)
    assert last.state is not None and last.state["isDone"] is True


def test_a_fan_out_is_flattened_into_its_activities(handlers: dict[str, OrchestratorHandler]) -> None:
    names = ["x", "y", "z"]
    result = replay_episode(
        handlers["fan_out"], episode_context([], started("fan_out", names), json.dumps(names), "fan-1")
    )
    assert [(a.action_type, a.name) for a in result.actions] == [(ActionType.CALL_ACTIVITY, "say_hello")] * 3
    assert [json.loads(a.raw["input"]) for a in result.actions] == names
    assert result.state is not None and result.state["actions"][0][0]["actionType"] == ActionType.WHEN_ALL


def test_an_orchestrator_that_raises_gives_its_message_and_nothing_else(
    handlers: dict[str, OrchestratorHandler],
) -> None:
    handler = handlers["failing"]
    received = started("failing", None)
    first = replay_episode(handler, episode_context([], received, None, "f-1"))
    assert [a.name for a in first.actions] == ["say_hello"] and first.error is None

    played, received = next_episode([], received, ["say_hello"])
    received.append(completed(0, "Hello before failure!"))
    failed = replay_episode(handler, episode_context(played, received, None, "f-1"))
    assert failed.error == "orchestrator exploded"
    assert (failed.actions, failed.is_done, failed.output, failed.state) == ([], False, None, None)
