"""History events and orchestrator actions in the shapes the Durable Functions SDK's replay protocol uses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any


class EventType(IntEnum):
    EXECUTION_STARTED = 0
    EXECUTION_COMPLETED = 1
    EXECUTION_FAILED = 2
    EXECUTION_TERMINATED = 3
    TASK_SCHEDULED = 4
    TASK_COMPLETED = 5
    TASK_FAILED = 6
    SUB_ORCHESTRATION_CREATED = 7
    SUB_ORCHESTRATION_COMPLETED = 8
    SUB_ORCHESTRATION_FAILED = 9
    TIMER_CREATED = 10
    TIMER_FIRED = 11
    ORCHESTRATOR_STARTED = 12
    ORCHESTRATOR_COMPLETED = 13
    EVENT_RAISED = 15
    CONTINUE_AS_NEW = 16


class ActionType(IntEnum):
    CALL_ACTIVITY = 0
    CALL_ACTIVITY_WITH_RETRY = 1
    CALL_SUB_ORCHESTRATOR = 2
    CALL_SUB_ORCHESTRATOR_WITH_RETRY = 3
    CONTINUE_AS_NEW = 4
    CREATE_TIMER = 5
    WAIT_FOR_EXTERNAL_EVENT = 6
    CALL_ENTITY = 7
    CALL_HTTP = 8
    SIGNAL_ENTITY = 9
    WHEN_ANY = 11
    WHEN_ALL = 12


ACTIVITY_ACTIONS = frozenset({ActionType.CALL_ACTIVITY, ActionType.CALL_ACTIVITY_WITH_RETRY})
SUB_ORCHESTRATION_ACTIONS = frozenset({ActionType.CALL_SUB_ORCHESTRATOR, ActionType.CALL_SUB_ORCHESTRATOR_WITH_RETRY})
RETRY_ACTIONS = frozenset({ActionType.CALL_ACTIVITY_WITH_RETRY, ActionType.CALL_SUB_ORCHESTRATOR_WITH_RETRY})


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def event(event_type: EventType, at: datetime, event_id: int = -1, **fields: Any) -> dict[str, Any]:
    return {"EventType": int(event_type), "EventId": event_id, "IsPlayed": False, "Timestamp": timestamp(at), **fields}


@dataclass(frozen=True)
class Action:
    """One atomic action an orchestrator asked for, flattened out of WhenAny / WhenAll."""

    action_type: ActionType
    raw: dict[str, Any]

    @property
    def name(self) -> str | None:
        if self.action_type is ActionType.WAIT_FOR_EXTERNAL_EVENT:
            return str(self.raw.get("externalEventName"))
        value = self.raw.get("functionName")
        return str(value) if value is not None else None

    @property
    def takes_task_id(self) -> bool:
        """External events are matched by name; everything else is numbered in the order it was scheduled."""
        return self.action_type is not ActionType.WAIT_FOR_EXTERNAL_EVENT

    @property
    def is_canceled(self) -> bool:
        return bool(self.raw.get("isCanceled"))


def flatten_actions(state: dict[str, Any]) -> list[Action]:
    """The atomic actions of an orchestrator state, in the order the SDK numbers them."""
    out: list[Action] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for child in item:
                walk(child)
            return
        kind = ActionType(int(item["actionType"]))
        if kind in (ActionType.WHEN_ANY, ActionType.WHEN_ALL):
            walk(item.get("compoundActions") or [])
        else:
            out.append(Action(kind, item))

    walk(state.get("actions") or [])
    return out


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
