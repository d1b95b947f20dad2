"""Load a v2-model ``function_app`` module, find its app object as the Python worker does, and index its functions
by trigger, as the host's indexer does."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from azure.functions import FunctionRegister

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


def find_function_app(module: ModuleType) -> FunctionRegister:
    """The module's one function app, found as the Python worker finds it: the module-level attribute that is a
    ``FunctionRegister`` (``func.FunctionApp``, ``df.DFApp``, ...), whatever its name. Like the worker, it goes
    through the module's attribute names in order, so one app bound to two names counts twice.

    Emulates ``index_function_app`` in the Python worker's azure_functions_worker/loader.py, with its error
    messages (https://github.com/Azure/azure-functions-python-worker/blob/7e6acf36e43335ad69742923af9ff3d62b99242a/
    azure_functions_worker/loader.py); the worker names its script file (``PYTHON_SCRIPT_FILE_NAME``, default
    ``function_app.py``) where this names the module's file.
    """
    found: FunctionRegister | None = None
    for name in module.__dir__():
        value = getattr(module, name, None)
        if isinstance(value, FunctionRegister):
            if found is not None:
                raise ValueError(
                    f"More than one {found.__class__.__name__} or other top level function app instances are defined."
                )
            found = value
    if found is None:
        script = Path(module.__file__ or f"{module.__name__}.py").name
        raise ValueError(f"Could not find top level function app instances in {script}.")
    return found


def load_app(module: str = "function_app", app_dir: Path | None = None) -> AppIndex:
    """Import ``module`` from ``app_dir`` (default: the current directory) and index its functions."""
    directory = str((app_dir or Path.cwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    app = find_function_app(importlib.import_module(module))
    # get_functions() is not idempotent in azure-functions 1.26 (FACTS.md): reset its cache first.
    app.functions_bindings = None
    index = AppIndex(app=app)
    for fn in app.get_functions():
        name = fn.get_function_name()
        assert name is not None  # the decorators default it to the Python function's name
        bindings = [json.loads(raw) for raw in fn.get_raw_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        index.functions[name] = FunctionInfo(
            name=name,
            trigger=trigger,
            bindings=[b for b in bindings if b is not trigger],
            func=fn.get_user_function(),
        )
    return index
