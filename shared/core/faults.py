"""Crash points for the fault-injection suite: with ``WRITEBACK_FAULT_KILL_AT=<name>`` set, the process kills itself
with SIGKILL when it reaches the checkpoint of that name — exactly like ``kill -9`` at that step boundary.

Test-only: nothing sets the variable in any deployment; unset, a checkpoint is one environment lookup.
Checkpoints: ``intake.after-claim``, ``intake.after-record``, ``intake.after-publish``, ``write.before``,
``write.after``, ``prepare.after``.
"""

from __future__ import annotations

import os
import signal

FAULT_SETTING = "WRITEBACK_FAULT_KILL_AT"


def checkpoint(name: str) -> None:
    if os.environ.get(FAULT_SETTING) == name:
        os.kill(os.getpid(), signal.SIGKILL)
