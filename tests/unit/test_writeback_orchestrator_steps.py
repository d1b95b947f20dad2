"""The real ``writeback_orchestrator`` generator, stepped by hand against a scripted orchestration context.

The generator is the user function the Durable decorator registered (taken from the blueprint's function, not
re-implemented). A small fake context records what the orchestrator asks for — which activity with which input and
retry options, which timers firing when, which event it waits for — and the test answers each request as the
Durable runtime would (activity results, a fired timer, a raised event, a failed activity thrown back in), moving
the orchestration clock to each timer's fire time. It proves the allowed path, the approval race against its
deadline (with timers looping past the 6-day cap and an optional reminder), the waits on a step answering
``retry`` until ``MAX_WAITS`` or the retry deadline, and the failure path. Deterministic: no I/O, no real clock.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import pytest

from orchestrators import writeback_orchestrator as orchestration
from orchestrators.writeback_orchestrator import APPROVAL_EVENT, MAX_TIMER, MAX_WAITS, ORCHESTRATOR_NAME, RETRY

START = datetime(2026, 11, 25, 12, tzinfo=UTC)
CID = "c-0001"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def orchestrator_function() -> Callable[[Any], Generator[Any, Any, dict[str, Any]]]:
    """The generator function behind the registered orchestration (what the Durable runtime calls)."""
    function = orchestration.writeback_orchestrator.build()
    assert function.get_function_name() == ORCHESTRATOR_NAME
    handle = function.get_user_function()
    generator: Callable[[Any], Generator[Any, Any, dict[str, Any]]] = handle.orchestrator_function
    return generator


def activity_name(activity: Any) -> str:
    return activity if isinstance(activity, str) else str(activity.build().get_function_name())


# --- a scripted orchestration context -----------------------------------------------------------------------


@dataclass(eq=False)
class Task:
    """What the orchestrator yields: an activity call, a timer, an external event, or a race between tasks."""

    kind: str
    name: str = ""
    input: Any = None
    retry: df.RetryOptions | None = None
    fire_at: datetime | None = None
    tasks: list[Task] = field(default_factory=list)
    result: Any = None
    cancelled: bool = False

    def cancel(self) -> None:
        assert self.kind == "timer", "only timers can be cancelled"
        self.cancelled = True


class FakeContext:
    def __init__(self, start: dict[str, Any], now: datetime) -> None:
        self._input = start
        self.current_utc_datetime = now
        self.statuses: list[dict[str, Any]] = []

    def get_input(self) -> dict[str, Any]:
        return self._input

    def call_activity(self, name: Any, input_: Any = None) -> Task:
        return Task("activity", activity_name(name), input_)

    def call_activity_with_retry(self, name: Any, retry_options: df.RetryOptions, input_: Any = None) -> Task:
        return Task("activity", activity_name(name), input_, retry=retry_options)

    def create_timer(self, fire_at: datetime) -> Task:
        return Task("timer", fire_at=fire_at)

    def wait_for_external_event(self, name: str) -> Task:
        return Task("event", name)

    def task_any(self, tasks: list[Task]) -> Task:
        return Task("any", tasks=list(tasks))

    def set_custom_status(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)


class Orchestration:
    """One run of the orchestrator: every task it yielded, in order, and how it ended."""

    def __init__(self, start: dict[str, Any] | None = None, *, now: datetime = START) -> None:
        self.context = FakeContext(start or {"changeId": CID, "traceparent": TRACE}, now)
        self._gen = orchestrator_function()(self.context)
        self.yielded: list[Task] = []
        self.output: dict[str, Any] | None = None
        self._advance(lambda: next(self._gen))

    @property
    def done(self) -> bool:
        return self.output is not None

    @property
    def pending(self) -> Task:
        assert not self.done, f"the orchestration ended with {self.output}"
        return self.yielded[-1]

    def _advance(self, step: Callable[[], Task]) -> None:
        try:
            self.yielded.append(step())
        except StopIteration as stop:
            self.output = stop.value

    # -- the runtime's answers --

    def complete(self, result: dict[str, Any]) -> Orchestration:
        """The pending activity returned ``result``."""
        assert self.pending.kind == "activity", self.pending
        self.pending.result = result
        self._advance(lambda: self._gen.send(result))
        return self

    def raise_in_activity(self, message: str) -> Orchestration:
        """The pending activity failed (after its retries): the runtime throws the failure into the orchestrator."""
        assert self.pending.kind == "activity", self.pending
        self._advance(lambda: self._gen.throw(Exception(message)))
        return self

    def fire_timer(self) -> Orchestration:
        """The pending timer fired (alone, or as the winner of the approval race)."""
        task = self.pending
        timer = task.tasks[1] if task.kind == "any" else task
        assert timer.kind == "timer" and timer.fire_at is not None, task
        self.context.current_utc_datetime = timer.fire_at
        self._advance(lambda: self._gen.send(timer if task.kind == "any" else None))
        return self

    def raise_event(self, payload: dict[str, Any], *, at: datetime | None = None) -> Orchestration:
        """The approval event arrived (at ``at``) and won the race against the deadline timer."""
        race = self.pending
        assert race.kind == "any", race
        event = race.tasks[0]
        assert (event.kind, event.name) == ("event", APPROVAL_EVENT), event
        if at is not None:
            self.context.current_utc_datetime = at
        event.result = payload
        self._advance(lambda: self._gen.send(event))
        return self

    # -- what it asked for --

    def calls(self) -> list[tuple[str, Any]]:
        return [(t.name, t.input) for t in self.yielded if t.kind == "activity"]

    def activities(self) -> list[str]:
        return [t.name for t in self.yielded if t.kind == "activity"]

    def timers(self) -> list[datetime]:
        """Fire times of every timer it created: retry waits and the timers of approval races."""
        out: list[datetime] = []
        for task in self.yielded:
            for timer in [task, *task.tasks]:
                if timer.kind == "timer" and timer.fire_at is not None:
                    out.append(timer.fire_at)
        return out

    def steps(self) -> list[str]:
        return [s["step"] for s in self.context.statuses]


def step_input(attempt: int = 0) -> dict[str, Any]:
    return {"changeId": CID, "attempt": attempt, "traceparent": TRACE}


def state(status: str, **extra: Any) -> dict[str, Any]:
    return {"changeId": CID, "status": status, **extra}


def waiting(expires: timedelta, *, notify: bool = False, remind: timedelta | None = None) -> dict[str, Any]:
    answer = state("awaiting_approval", expiresAt=(START + expires).isoformat(), notify=notify)
    if remind is not None:
        answer["remindAt"] = (START + remind).isoformat()
    return answer


def retry(after: float, status: str = "accepted", downstream: int = 429) -> dict[str, Any]:
    return state(status, retry=True, retryAfter=after, code="downstream-retryable", downstreamStatus=downstream)


def approval_race(run: Orchestration) -> Task:
    race = run.pending
    assert race.kind == "any" and [t.kind for t in race.tasks] == ["event", "timer"], race
    return race


# --- the allowed path ---------------------------------------------------------------------------------------


def test_the_registered_orchestration_is_a_generator_over_the_context() -> None:
    run = Orchestration()
    first = run.pending
    assert (first.kind, first.name, first.input) == ("activity", "prepare_change", step_input())
    assert first.retry is RETRY
    assert run.context.statuses == [{"changeId": CID, "step": "prepare"}]


def test_an_allowed_change_is_prepared_then_written_then_done() -> None:
    run = Orchestration()
    run.complete(state("writing"))
    write = run.pending
    assert (write.name, write.input, write.retry) == ("write_change", step_input(), RETRY)
    run.complete(state("completed"))

    assert run.output == state("completed")
    assert run.calls() == [("prepare_change", step_input()), ("write_change", step_input())]
    assert run.timers() == []
    assert run.context.statuses == [
        {"changeId": CID, "step": "prepare"},
        {"changeId": CID, "step": "write"},
        {"changeId": CID, "step": "done", "status": "completed"},
    ]


@pytest.mark.parametrize("end", ["rejected", "planned", "conflict", "failed", "completed"])
def test_a_change_that_ends_in_prepare_is_not_written(end: str) -> None:
    run = Orchestration().complete(state(end))
    assert run.output == state(end) and run.activities() == ["prepare_change"]
    assert run.context.statuses[-1] == {"changeId": CID, "step": "done", "status": end}


def test_without_a_traceparent_or_deadline_the_defaults_apply() -> None:
    run = Orchestration({"changeId": CID})
    assert run.pending.input == {"changeId": CID, "attempt": 0, "traceparent": None}
    run.complete(retry(3599))
    assert run.pending.fire_at == START + timedelta(seconds=3599), "within the default one-hour retry deadline"


# --- approval ---------------------------------------------------------------------------------------------


def test_an_approval_decision_beats_the_deadline_and_the_timer_is_cancelled() -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72), notify=True))
    notify = run.pending
    assert (notify.name, notify.input, notify.retry) == (
        "notify_approvers",
        {"changeId": CID, "kind": "approval-requested"},
        RETRY,
    )
    run.complete({"sent": True})
    race = approval_race(run)
    deadline = race.tasks[1]
    assert deadline.fire_at == START + timedelta(hours=72)

    run.raise_event(state("writing"), at=START + timedelta(hours=5))
    assert deadline.cancelled is True
    assert run.pending.name == "write_change"
    run.complete(state("completed"))
    assert run.output == state("completed")
    assert run.activities() == ["prepare_change", "notify_approvers", "write_change"]
    assert run.steps() == ["prepare", "awaiting_approval", "write", "done"]


@pytest.mark.parametrize("decision", ["rejected", "cancelled"])
def test_a_rejection_or_cancel_ends_the_wait_without_a_write(decision: str) -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72)))
    race = approval_race(run)
    run.raise_event(state(decision))
    assert race.tasks[1].cancelled is True
    assert run.output == state(decision)
    assert run.activities() == ["prepare_change"], "no notify_approvers without 'notify', no write"
    assert run.context.statuses[-1] == {"changeId": CID, "step": "done", "status": decision}


def test_when_the_deadline_wins_the_change_is_expired() -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72)))
    race = approval_race(run)
    run.fire_timer()
    expire = run.pending
    assert (expire.name, expire.input, expire.retry) == ("expire_change", {"changeId": CID}, None)
    assert race.tasks[1].cancelled is False
    run.complete(state("expired"))
    assert run.output == state("expired")
    assert run.timers() == [START + timedelta(hours=72)]
    assert run.context.statuses[-1] == {"changeId": CID, "step": "done", "status": "expired"}


def test_a_change_approved_just_before_the_deadline_fires_is_still_written() -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72))).fire_timer()
    run.complete(state("writing"))  # expire found it approved just before: it answers the state it found
    assert run.pending.name == "write_change", "a change approved at the last moment is still written"
    run.complete(state("completed"))
    assert run.output == state("completed")


@pytest.mark.parametrize(
    ("deadline", "fire_times"),
    [
        (timedelta(days=10), [timedelta(days=6), timedelta(days=10)]),
        (timedelta(days=14), [timedelta(days=6), timedelta(days=12), timedelta(days=14)]),
        (timedelta(days=6), [timedelta(days=6)]),
    ],
)
def test_a_deadline_past_the_timer_cap_loops_on_timers_of_at_most_six_days(
    deadline: timedelta, fire_times: list[timedelta]
) -> None:
    run = Orchestration().complete(waiting(deadline))
    for _ in fire_times:
        approval_race(run)
        run.fire_timer()
    assert run.timers() == [START + t for t in fire_times]
    assert all(b - a <= MAX_TIMER for a, b in zip([START, *run.timers()], run.timers(), strict=False))
    assert run.pending.name == "expire_change"
    run.complete(state("expired"))
    assert run.output == state("expired")


def test_a_decision_after_a_looped_timer_is_still_taken() -> None:
    run = Orchestration().complete(waiting(timedelta(days=10))).fire_timer()
    race = approval_race(run)
    run.raise_event(state("writing"), at=START + timedelta(days=7))
    assert race.tasks[1].cancelled is True and run.pending.name == "write_change"


def test_a_reminder_is_sent_when_remind_at_is_reached_then_the_wait_goes_on() -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72), notify=True, remind=timedelta(hours=24)))
    run.complete({"sent": True})  # approval-requested
    assert approval_race(run).tasks[1].fire_at == START + timedelta(hours=24)
    run.fire_timer()
    reminder = run.pending
    assert (reminder.name, reminder.input) == ("notify_approvers", {"changeId": CID, "kind": "approval-reminder"})
    run.complete({"sent": True})
    assert approval_race(run).tasks[1].fire_at == START + timedelta(hours=72)
    run.fire_timer()
    assert run.pending.name == "expire_change"
    assert run.timers() == [START + timedelta(hours=24), START + timedelta(hours=72)]
    assert [c[1]["kind"] for c in run.calls() if c[0] == "notify_approvers"] == [
        "approval-requested",
        "approval-reminder",
    ]


def test_without_notify_the_reminder_time_passes_silently() -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72), notify=False, remind=timedelta(hours=24)))
    run.fire_timer()
    assert approval_race(run).tasks[1].fire_at == START + timedelta(hours=72)
    run.raise_event(state("writing"))
    assert run.activities() == ["prepare_change", "write_change"]
    assert run.timers() == [START + timedelta(hours=24), START + timedelta(hours=72)]


def test_a_reminder_beyond_the_timer_cap_waits_on_a_looped_timer_first() -> None:
    run = Orchestration().complete(waiting(timedelta(days=10), notify=True, remind=timedelta(days=8)))
    run.complete({"sent": True})
    run.fire_timer()  # day 6: neither the reminder nor the deadline
    assert approval_race(run).tasks[1].fire_at == START + timedelta(days=8)
    run.fire_timer()
    assert run.pending.input == {"changeId": CID, "kind": "approval-reminder"}
    run.complete({"sent": True})
    run.fire_timer()
    assert run.pending.name == "expire_change"
    assert run.timers() == [START + timedelta(days=d) for d in (6, 8, 10)]


# --- waiting on a target that answers "retry" -------------------------------------------------------------------


def test_a_step_answering_retry_waits_then_fails_after_max_waits() -> None:
    run = Orchestration({"changeId": CID, "traceparent": TRACE, "retryDeadlineSeconds": 86400})
    for attempt in range(MAX_WAITS - 1):
        assert (run.pending.name, run.pending.input) == ("prepare_change", step_input(attempt))
        run.complete(retry(5))
        assert run.pending.kind == "timer"
        assert run.context.statuses[-1] == {"changeId": CID, "step": "waiting-to-retry", "attempt": attempt + 1}
        run.fire_timer()
    assert run.pending.input == step_input(MAX_WAITS - 1)
    run.complete(retry(5))

    fail = run.pending
    assert (fail.name, fail.retry) == ("fail_change", None)
    assert fail.input == {"changeId": CID, "detail": "the target kept failing (downstream-retryable, HTTP 429)"}
    run.complete(state("failed"))
    assert run.output == state("failed")
    assert [name for name in run.activities() if name == "prepare_change"] == ["prepare_change"] * MAX_WAITS
    assert run.timers() == [START + timedelta(seconds=5 * n) for n in range(1, MAX_WAITS)]
    assert run.context.statuses[-1] == {"changeId": CID, "step": "done", "status": "failed"}


def test_a_step_that_recovers_after_waiting_goes_on() -> None:
    run = Orchestration().complete(retry(30)).fire_timer()
    assert run.pending.input == step_input(1)
    run.complete(state("writing"))
    assert run.pending.input == step_input(0), "the write starts counting its own attempts"
    run.complete(retry(60, status="writing", downstream=503)).fire_timer()
    run.complete(state("completed"))
    assert run.output == state("completed")
    assert run.timers() == [START + timedelta(seconds=30), START + timedelta(seconds=90)]
    assert run.steps() == ["prepare", "waiting-to-retry", "write", "waiting-to-retry", "done"]


@pytest.mark.parametrize(
    ("retry_after", "timers"),
    [
        (300, [300, 600, 900]),  # the 4th wait would end at 1200 s, past the 1000 s deadline
        (250, [250, 500, 750, 1000]),  # a wait ending exactly at the deadline is still taken
    ],
)
def test_a_step_answering_retry_fails_when_the_wait_would_pass_the_retry_deadline(
    retry_after: int, timers: list[int]
) -> None:
    run = Orchestration({"changeId": CID, "traceparent": TRACE, "retryDeadlineSeconds": 1000})
    run.complete(state("writing"))
    for _ in timers:
        run.complete(retry(retry_after, status="writing", downstream=503)).fire_timer()
    run.complete(retry(retry_after, status="writing", downstream=503))
    assert run.pending.name == "fail_change"
    assert run.pending.input["detail"] == "the target kept failing (downstream-retryable, HTTP 503)"
    assert run.timers() == [START + timedelta(seconds=s) for s in timers]
    assert [i["attempt"] for n, i in run.calls() if n == "write_change"] == list(range(len(timers) + 1))
    run.complete(state("failed"))
    assert run.output == state("failed")


def test_a_change_approved_after_the_retry_deadline_still_waits_for_a_throttled_target() -> None:
    run = Orchestration().complete(waiting(timedelta(hours=72)))
    approved_at = START + timedelta(hours=2)
    run.raise_event(state("writing"), at=approved_at)
    run.complete(retry(5, status="writing"))
    assert run.pending.kind == "timer" and run.pending.fire_at == approved_at + timedelta(seconds=5)


# --- an activity that raises ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["prepare", "write", "notify"])
def test_an_activity_that_raises_fails_the_change_with_the_first_line_of_the_error(where: str) -> None:
    run = Orchestration()
    if where != "prepare":
        run.complete(state("writing") if where == "write" else waiting(timedelta(hours=1), notify=True))
    run.raise_in_activity("Activity function 'x' failed: PermanentError: boom \n Traceback (most recent call last):")
    fail = run.pending
    assert (fail.name, fail.retry) == ("fail_change", None)
    assert fail.input == {"changeId": CID, "detail": "Activity function 'x' failed: PermanentError: boom "}
    run.complete(state("failed"))
    assert run.output == state("failed")
    assert run.context.statuses[-1] == {"changeId": CID, "step": "done", "status": "failed"}


def test_the_failure_detail_is_cut_to_500_characters() -> None:
    run = Orchestration().raise_in_activity("x" * 800 + "\nsecond line")
    assert run.pending.input == {"changeId": CID, "detail": "x" * 500}
