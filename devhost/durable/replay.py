"""One orchestrator episode through the ``azure-functions-durable`` SDK's replay protocol, the host's side of it.

An *episode* is one call of an orchestrator: the host hands it the whole history (the events of earlier episodes,
marked played, then this episode's OrchestratorStarted and the events it received), and the SDK replays the user's
generator over it and answers with its state: every action scheduled so far (earlier episodes' too), whether the
orchestration is done, its output and its custom status.

The local runtime's engine (``devhost.durable.engine``) runs every episode through ``replay_episode``; the benchmarks
use the same two functions to replay histories without an engine:

    context = episode_context(played, received, orchestration_input, instance_id)
    result = replay_episode(handler, context)  # handler: the orchestration function's user function
    [(a.action_type, a.name) for a in result.actions], result.is_done, result.output, result.custom_status

Events are dicts in the shape ``devhost.durable.history.event`` builds (``EventType``, ``EventId``, ``IsPlayed``,
``Timestamp`` and the event's own fields).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from devhost.durable.history import Action, dumps, flatten_actions

# The SDK raises an orchestrator's exception with its state appended after this marker.
OUT_OF_PROC_MARKER = "$OutOfProcData$:"
# The Azure Storage provider's limits, passed on to the SDK (which splits longer timers itself).
MAX_SHORT_TIMER = "6.00:00:00"
LONG_TIMER_INTERVAL = "3.00:00:00"

OrchestratorHandler = Callable[[str], str]
"""An orchestration function as the SDK registers it (``FunctionInfo.func``): context JSON in, state JSON out."""


def episode_context(
    history: list[dict[str, Any]],
    new_events: list[dict[str, Any]],
    orchestration_input: str | None,
    instance_id: str,
    parent_instance_id: str | None = None,
) -> dict[str, Any]:
    """The context the host hands the orchestrator for one episode.

    ``history`` is what earlier episodes recorded (each event with ``IsPlayed`` true), ``new_events`` this episode's
    OrchestratorStarted and the events it received (``IsPlayed`` false); ``orchestration_input`` is the instance's
    input as JSON text (the SDK decodes it).
    """
    return {
        "history": history + new_events,
        "input": orchestration_input,
        "instanceId": instance_id,
        "isReplaying": bool(history),
        "parentInstanceId": parent_instance_id,
        "upperSchemaVersion": 1,
        "upperSchemaVersionNew": 2,
        "maximumShortTimerDuration": MAX_SHORT_TIMER,
        "longRunningTimerIntervalDuration": LONG_TIMER_INTERVAL,
    }


@dataclass(frozen=True)
class EpisodeResult:
    """What the orchestrator answered for one episode, decoded.

    ``actions`` are the atomic actions in the order the SDK numbers them (WhenAny / WhenAll flattened), including
    the ones earlier episodes scheduled. When the orchestrator raised, ``error`` holds its message (the text before
    the SDK's out-of-proc marker) and nothing else is decoded: no actions, not done, no output or custom status.
    """

    actions: list[Action] = field(default_factory=list)
    is_done: bool = False
    output: Any = None
    custom_status: Any = None
    error: str | None = None
    state: dict[str, Any] | None = None
    """The orchestrator's state as the SDK returned it (None when it raised)."""


def replay_episode(handler: OrchestratorHandler, context: Mapping[str, Any] | str) -> EpisodeResult:
    """Run one episode: call ``handler`` with ``context`` (from ``episode_context``; or that context already
    encoded as JSON, to keep the encoding out of a timing) and decode the state it returns.

    An exception of the orchestrator's becomes ``EpisodeResult.error``; a state that is not JSON raises.
    """
    raw = context if isinstance(context, str) else dumps(context)
    try:
        answer = handler(raw)
    except Exception as exc:
        return EpisodeResult(error=str(exc).split(OUT_OF_PROC_MARKER, 1)[0].strip())
    state = json.loads(answer) or {}
    return EpisodeResult(
        actions=flatten_actions(state),
        is_done=bool(state.get("isDone")),
        output=state.get("output"),
        custom_status=state.get("customStatus"),
        state=state,
    )
