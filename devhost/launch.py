"""Start the local runtime as the settings ask: one instance in this process, or several under a supervisor.

``WRITEBACK_DEV_INSTANCES`` (default 1) and ``WRITEBACK_DEV_INSTANCE_GROUPS`` (``devhost.groups``) decide, unless the
caller passes them. ``python -m devhost`` and ``make run`` (``tools.services``) both start the gateway through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from devhost.groups import GROUPS_SETTING, INSTANCES_SETTING, plan_instances
from devhost.host import LocalRuntime
from devhost.supervisor import Supervisor


def launch(
    *,
    app_dir: Path,
    state_dir: Path,
    port: int,
    module: str = "function_app",
    instances: int | None = None,
    groups: str | None = None,
    log_level: str = "INFO",
) -> LocalRuntime | Supervisor:
    """The runtime, started: a ``LocalRuntime`` when one instance is asked for, else a ``Supervisor`` of several, all
    serving ``port``. Stop it with ``stop()``."""
    count = instances if instances is not None else int(os.environ.get(INSTANCES_SETTING) or 1)
    plan = plan_instances(count, groups if groups is not None else os.environ.get(GROUPS_SETTING))
    running: LocalRuntime | Supervisor
    if len(plan) == 1:
        running = LocalRuntime(app_dir=app_dir, state_dir=state_dir, port=port, module=module)
    else:
        running = Supervisor(
            app_dir=app_dir, state_dir=state_dir, shared_port=port, plan=plan, module=module, log_level=log_level
        )
    running.start()
    return running
