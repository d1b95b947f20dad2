"""The local runtime: one process that serves the app's HTTP functions, runs its orchestrations and activities,
delivers its Service Bus messages and fires its timers, with all state on disk under one folder.

Settings: ``local.settings.json`` ``Values`` (when present) are put into the environment first, like ``func start``
does; variables already set win. The app is told where the runtime is through ``WRITEBACK_LOCAL_RUNTIME_URL``, so
its message publisher can enqueue into the local Service Bus.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devhost.app_index import AppIndex, load_app
from devhost.durable.client_api import client_binding_json, durable_routes
from devhost.durable.engine import DurableEngine
from devhost.http_server import build_asgi_app, read_host_json, route_prefix_from, serve
from devhost.servicebus import LocalServiceBus
from devhost.servicebus_trigger import ServiceBusTriggerPump, queue_routes
from devhost.timers import TimerPump

log = logging.getLogger("devhost")

RUNTIME_URL_SETTING = "WRITEBACK_LOCAL_RUNTIME_URL"


def load_local_settings(app_dir: Path) -> dict[str, str]:
    """Put ``local.settings.json`` Values into the environment (without overriding what is set)."""
    path = app_dir / "local.settings.json"
    if not path.exists():
        return {}
    values = json.loads(path.read_text()).get("Values", {})
    applied = {}
    for key, value in values.items():
        if key not in os.environ and value is not None:
            os.environ[key] = str(value)
            applied[key] = str(value)
    return applied


def _task_hub(host_json: dict[str, Any]) -> str:
    hub = str(host_json.get("extensions", {}).get("durableTask", {}).get("hubName", "LocalTaskHub"))
    if hub.startswith("%") and hub.endswith("%"):
        hub = os.environ.get(hub.strip("%"), "LocalTaskHub")
    return hub or "LocalTaskHub"


@dataclass
class LocalRuntime:
    app_dir: Path
    state_dir: Path
    port: int = 7071
    module: str = "function_app"
    activity_workers: int = 8
    index: AppIndex | None = field(default=None, init=False)
    engine: DurableEngine | None = field(default=None, init=False)
    bus: LocalServiceBus | None = field(default=None, init=False)
    _parts: list[Any] = field(default_factory=list, init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        load_local_settings(self.app_dir)
        os.environ.setdefault(RUNTIME_URL_SETTING, self.base_url)
        host_json = read_host_json(self.app_dir)
        self.index = load_app(self.module, self.app_dir)
        task_hub = _task_hub(host_json)
        self.engine = DurableEngine(
            self.index, self.state_dir / "durable.db", task_hub=task_hub, activity_workers=self.activity_workers
        )
        sb_settings = host_json.get("extensions", {}).get("serviceBus", {})
        # The lock duration of the local queue (Service Bus: 60 s); shorter makes crash tests quicker.
        lock_seconds = float(os.environ.get("WRITEBACK_DEV_SERVICEBUS_LOCK_SECONDS", "60"))
        self.bus = LocalServiceBus(self.state_dir / "servicebus.db", lock_duration=lock_seconds)
        client_json = client_binding_json(self.base_url, task_hub)
        pump = ServiceBusTriggerPump(self.index, self.bus, host_json=host_json, durable_client_json=lambda: client_json)
        timers = TimerPump(self.index, state_db=self.state_dir / "timers.db", durable_client_json=lambda: client_json)
        app = build_asgi_app(
            self.index,
            route_prefix=route_prefix_from(host_json),
            extra_routes=[*durable_routes(self.engine), *queue_routes(self.bus)],
            durable_client_json=lambda base: client_binding_json(base, task_hub),
        )
        server = serve(app, host="127.0.0.1", port=self.port)
        self.engine.start()
        self._parts.append(self.engine)
        server.start()
        server.wait_ready()
        self._parts.append(server)
        pump.start()
        self._parts.append(pump)
        timers.start()
        self._parts.append(timers)
        log.info(
            "local runtime on %s: %d functions, task hub %s, Service Bus settings %s",
            self.base_url,
            len(self.index.functions),
            task_hub,
            sb_settings,
        )

    def stop(self) -> None:
        for part in reversed(self._parts):
            try:
                part.stop()
            except Exception:
                log.exception("error stopping %s", type(part).__name__)
        self._parts.clear()
