"""A sample v2-model app with timer-triggered functions, for the local runtime's timer tests.

Each function records the ``TimerRequest`` it got in ``CALLS`` (function name -> list of dicts).
"""

from __future__ import annotations

import threading
from typing import Any

import azure.functions as func

app = func.FunctionApp()

CALLS: dict[str, list[dict[str, Any]]] = {}
RELEASE_SLOW = threading.Event()
SLOW_STARTED = threading.Event()


def _record(name: str, timer: func.TimerRequest) -> None:
    CALLS.setdefault(name, []).append(
        {
            "past_due": timer.past_due,
            "schedule_status": dict(timer.schedule_status),  # type: ignore[attr-defined]
            "schedule": dict(timer.schedule),  # type: ignore[attr-defined]
            "type": type(timer),
        }
    )


def reset() -> None:
    CALLS.clear()
    RELEASE_SLOW.clear()
    SLOW_STARTED.clear()


@app.timer_trigger(arg_name="timer", schedule="%SAMPLE_TIMER_SCHEDULE%")
def monitored(timer: func.TimerRequest) -> None:
    _record("monitored", timer)


@app.timer_trigger(arg_name="timer", schedule="0 * * * * *", use_monitor=False)
def unmonitored(timer: func.TimerRequest) -> None:
    _record("unmonitored", timer)


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
def on_startup(timer: func.TimerRequest) -> None:
    _record("on_startup", timer)


@app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *")
def every_second_flaky(timer: func.TimerRequest) -> None:
    _record("every_second_flaky", timer)
    if len(CALLS["every_second_flaky"]) == 1:
        raise RuntimeError("first run fails")


@app.timer_trigger(arg_name="timer", schedule="0 * * * * *")
def slow(timer: func.TimerRequest) -> None:
    _record("slow", timer)
    SLOW_STARTED.set()
    RELEASE_SLOW.wait(5)


@app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
def failing(timer: func.TimerRequest) -> None:
    _record("failing", timer)
    raise ValueError("timer failed")
