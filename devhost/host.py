"""The local runtime: a process that serves the app's HTTP functions, runs its orchestrations and activities,
delivers its Service Bus messages and fires its timers, with all state on disk under one folder.

One process is one instance of the function app. Several can share one state folder (``devhost.supervisor`` starts
them): each runs the trigger groups it is given (``devhost.groups``), leases work from the shared state, listens on
a private port of its own and, when it runs the HTTP group, on the port the instances share. Each lists itself in
``<state dir>/instances.json`` (``devhost.instances``).

Settings: ``local.settings.json`` ``Values`` (when present) are put into the environment first, like ``func start``
does; variables already set win. The app is told where the runtime is through ``WRITEBACK_LOCAL_RUNTIME_URL`` (the
shared URL), so its message publisher can enqueue into the local Service Bus: every instance serves the queue's
routes, on its private port and, with the HTTP group, on the shared one.

With ``WRITEBACK_DEV_EASYAUTH=1`` each instance puts the App Service Authentication emulation (``devhost.easyauth``)
in front of its HTTP server, configured from the same files and key as the others.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from devhost import easyauth
from devhost.app_index import AppIndex, load_app
from devhost.durable.client_api import client_binding_json, durable_routes
from devhost.durable.engine import DurableEngine
from devhost.groups import ALL_GROUPS, DURABLE, HTTP, SERVICE_BUS, TIMER, format_groups
from devhost.http_server import build_asgi_app, read_host_json, route_prefix_from, serve
from devhost.instances import register_instance, unregister_instance
from devhost.leases import lease_seconds, new_owner_id
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
    """One instance. Alone (``shared_port`` None) it listens on ``port`` and runs every group, as before there were
    several; as one of several it listens on ``port`` (0: any free one) and, with the HTTP group, on ``shared_port``.
    """

    app_dir: Path
    state_dir: Path
    port: int = 7071
    module: str = "function_app"
    activity_workers: int = 8
    groups: frozenset[str] = ALL_GROUPS
    shared_port: int | None = None
    instance_index: int = 0
    index: AppIndex | None = field(default=None, init=False)
    engine: DurableEngine | None = field(default=None, init=False)
    bus: LocalServiceBus | None = field(default=None, init=False)
    owner: str = field(default_factory=new_owner_id, init=False)
    _parts: list[Any] = field(default_factory=list, init=False)
    _registered: bool = field(default=False, init=False)

    @property
    def base_url(self) -> str:
        """This instance's own URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_url(self) -> str:
        """The URL all instances serve (this instance's own when it runs alone)."""
        return f"http://127.0.0.1:{self.shared_port}" if self.shared_port is not None else self.base_url

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        load_local_settings(self.app_dir)
        os.environ.setdefault(RUNTIME_URL_SETTING, self.public_url)
        host_json = read_host_json(self.app_dir)
        self.index = load_app(self.module, self.app_dir)
        task_hub = _task_hub(host_json)
        leases = lease_seconds()
        self.engine = DurableEngine(
            self.index,
            self.state_dir / "durable.db",
            task_hub=task_hub,
            activity_workers=self.activity_workers,
            owner=self.owner,
            lease_seconds=leases,
        )
        sb_settings = host_json.get("extensions", {}).get("serviceBus", {})
        # The lock duration of the local queue (Service Bus: 60 s); shorter makes crash tests quicker.
        lock_seconds = float(os.environ.get("WRITEBACK_DEV_SERVICEBUS_LOCK_SECONDS", "60"))
        self.bus = LocalServiceBus(self.state_dir / "servicebus.db", lock_duration=lock_seconds)

        def own_client_json() -> str:  # functions not triggered by HTTP reach the durable API on this instance
            return client_binding_json(self.base_url, task_hub)

        app: ASGIApp = build_asgi_app(
            self.index,
            route_prefix=route_prefix_from(host_json),
            extra_routes=[*durable_routes(self.engine), *queue_routes(self.bus)],
            durable_client_json=lambda base: client_binding_json(base, task_hub),
            functions=HTTP in self.groups,
        )
        if easyauth.enabled():
            app = easyauth.protect(app, app_dir=self.app_dir, state_dir=self.state_dir)
        shared = self.shared_port if HTTP in self.groups else None
        server = serve(app, host="127.0.0.1", port=self.port, shared_port=shared)
        if DURABLE in self.groups:
            self.engine.start()
        self._parts.append(self.engine)
        server.start()
        self.port = server.port
        server.wait_ready()
        self._parts.append(server)
        if SERVICE_BUS in self.groups:
            pump = ServiceBusTriggerPump(self.index, self.bus, host_json=host_json, durable_client_json=own_client_json)
            pump.start()
            self._parts.append(pump)
        if TIMER in self.groups:
            timers = TimerPump(
                self.index,
                state_db=self.state_dir / "timers.db",
                durable_client_json=own_client_json,
                owner=self.owner,
                lease_seconds=leases,
            )
            timers.start()
            self._parts.append(timers)
        register_instance(
            self.state_dir, url=self.base_url, groups=sorted(self.groups), index=self.instance_index, owner=self.owner
        )
        self._registered = True
        log.info(
            "local runtime on %s%s: %d functions, groups %s, task hub %s, Service Bus settings %s",
            self.base_url,
            f" and shared {self.public_url}" if shared is not None else "",
            len(self.index.functions),
            format_groups(self.groups),
            task_hub,
            sb_settings,
        )

    def stop(self) -> None:
        if self._registered:
            unregister_instance(self.state_dir)
            self._registered = False
        for part in reversed(self._parts):
            try:
                part.stop()
            except Exception:
                log.exception("error stopping %s", type(part).__name__)
        self._parts.clear()
