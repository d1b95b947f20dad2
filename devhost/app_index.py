"""Load a v2-model ``function_app`` module and index its functions by trigger, as the host's indexer does."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HTTP = "httpTrigger"
ORCHESTRATION = "orchestrationTrigger"
ACTIVITY = "activityTrigger"
SERVICE_BUS = "serviceBusTrigger"
TIMER = "timerTrigger"
ENTITY = "entityTrigger"
DURABLE_CLIENT = "durableClient"


@dataclass
class FunctionInfo:
    """One function of the app: its trigger binding, its other bindings, and the callable the worker invokes."""

    name: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    func: Callable[..., Any]

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def trigger_param(self) -> str:
        return str(self.trigger["name"])

    @property
    def durable_client_param(self) -> str | None:
        for b in self.bindings:
            if b["type"] == DURABLE_CLIENT:
                return str(b["name"])
        return None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    @property
    def accepts_context(self) -> bool:
        try:
            return "context" in inspect.signature(self.func).parameters
        except (TypeError, ValueError):
            return False

    @property
    def durable_name(self) -> str:
        """The name orchestrations use to call it (``activity=`` / ``orchestration=`` override the function name)."""
        for key in ("activity", "orchestration", "entityName"):
            value = self.trigger.get(key)
            if value:
                return str(value)
        return self.name


@dataclass
class AppIndex:
    functions: dict[str, FunctionInfo] = field(default_factory=dict)
    app: Any = None

    def by_trigger(self, trigger_type: str) -> list[FunctionInfo]:
        return [f for f in self.functions.values() if f.trigger_type == trigger_type]

    def durable(self, trigger_type: str) -> dict[str, FunctionInfo]:
        return {f.durable_name: f for f in self.by_trigger(trigger_type)}


def load_app(module: str = "function_app", app_dir: Path | None = None, attribute: str = "app") -> AppIndex:
    """Import ``module`` from ``app_dir`` (default: the current directory) and index its functions."""
    directory = str((app_dir or Path.cwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    mod = importlib.import_module(module)
    app = getattr(mod, attribute)
    # get_functions() is not idempotent in azure-functions 1.26 (FACTS.md): reset its cache first.
    app.functions_bindings = None
    index = AppIndex(app=app)
    for fn in app.get_functions():
        bindings = [json.loads(raw) for raw in fn.get_raw_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        index.functions[fn.get_function_name()] = FunctionInfo(
            name=fn.get_function_name(),
            trigger=trigger,
            bindings=[b for b in bindings if b is not trigger],
            func=fn.get_user_function(),
        )
    return index
