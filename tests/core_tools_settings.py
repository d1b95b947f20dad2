"""What a ``local.settings.json`` must hold for ``func start`` to run this app, read from the app itself: the settings
its bindings and host.json name, and the settings the app's composition root needs to build its parts.

- A binding's ``connection`` (and host.json's ``connectionName``) is an app setting holding a connection string, or a
  group of ``<name>__<property>`` settings for an identity-based connection
  (https://learn.microsoft.com/azure/azure-functions/functions-reference#configure-an-identity-based-connection).
- ``%NAME%`` in a binding property or in host.json is resolved from the app setting ``NAME``; the host fails to index
  a function whose expression does not resolve.
- ``AzureWebJobsStorage`` is required for every trigger other than HTTP, and ``FUNCTIONS_WORKER_RUNTIME`` always
  (https://learn.microsoft.com/azure/azure-functions/functions-develop-local#local-settings-file).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devhost.app_index import load_app

REPO = Path(__file__).resolve().parents[1]
SETTING_REFERENCE = re.compile(r"%([^%]+)%")
# The properties that make an identity-based connection (one is enough to locate the service).
IDENTITY_PROPERTIES = (
    "fullyQualifiedNamespace",
    "serviceUri",
    "accountName",
    "blobServiceUri",
    "queueServiceUri",
    "tableServiceUri",
)


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
    elif isinstance(value, str):
        yield key, value


def settings_the_host_reads() -> tuple[set[str], set[str]]:
    """(app settings named by ``%...%``, connection names) of function_app.py's bindings and of host.json."""
    names: set[str] = set()
    connections: set[str] = set()
    index = load_app("function_app", REPO)
    for fn in index.functions.values():
        for binding in (fn.trigger, *fn.bindings):
            for key, value in _strings(binding):
                names |= set(SETTING_REFERENCE.findall(value))
                if key == "connection" and value:
                    connections.add(value)
        if fn.trigger_type != "httpTrigger":
            connections.add("AzureWebJobsStorage")
    for key, value in _strings(json.loads((REPO / "host.json").read_text())):
        names |= set(SETTING_REFERENCE.findall(value))
        if key == "connectionName":
            connections.add(value)
    return names, connections


def connection_is_set(values: dict[str, str], name: str) -> bool:
    return bool(values.get(name)) or any(values.get(f"{name}__{p}") for p in IDENTITY_PROPERTIES)


def missing_host_settings(values: dict[str, str]) -> list[str]:
    """What the Functions host would miss in these ``Values``."""
    names, connections = settings_the_host_reads()
    missing = [f"{n} (named by %{n}%)" for n in sorted(names) if not values.get(n)]
    missing += [f"{c} (a connection)" for c in sorted(connections) if not connection_is_set(values, c)]
    if values.get("FUNCTIONS_WORKER_RUNTIME") != "python":
        missing.append("FUNCTIONS_WORKER_RUNTIME = python")
    return missing


def app_environment(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """The process environment ``func start`` gives the worker: these ``Values`` and nothing of this test run's."""
    from shared.config import Settings

    aliases = {a for f in Settings.model_fields.values() for a in getattr(f.validation_alias, "choices", ())}
    for key in list(os.environ):
        if key.startswith(("WRITEBACK_", "IDENTITY_", "ServiceBusConnection", "WritebackStorage")) or key in aliases:
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)


def build_app_parts(monkeypatch: pytest.MonkeyPatch, values: dict[str, str], *parts: str) -> None:
    """Build the app's parts from these ``Values`` as the worker would (no network: clients connect on first use);
    raises what the app would raise on a missing or bad setting."""
    from shared.bootstrap import build
    from shared.config import Settings

    app_environment(monkeypatch, values)
    gateway = build(Settings())
    for part in parts:
        getattr(gateway, part)
