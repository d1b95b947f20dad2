"""Invoke one function of the app the way the Python worker does: keyword arguments named after the bindings.

Like the real worker, every ``async def`` function runs on ONE event loop (a dedicated thread), whatever its
trigger; the durable client's shared aiohttp session and its ``asyncio.Lock`` are bound to the loop they were
first used on, so a second loop would break them. Sync functions run on the calling thread (``invoke``) or in
a thread pool (``ainvoke``). A durable client binding receives the JSON string the host would pass; the SDK's
own middleware turns it into a real ``DurableOrchestrationClient``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Coroutine
from typing import Any

import azure.functions as func

from devhost.app_index import FunctionInfo


class InvocationContext(func.Context):
    """The ``context`` argument a function may declare."""

    def __init__(self, fn: FunctionInfo, invocation_id: str | None = None) -> None:
        self._invocation_id = invocation_id or str(uuid.uuid4())
        self._fn = fn
        self._tls = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._fn.name

    @property
    def function_directory(self) -> str:
        return ""

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def build_kwargs(fn: FunctionInfo, trigger_value: Any, durable_client_json: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {fn.trigger_param: trigger_value}
    client_param = fn.durable_client_param
    if client_param is not None:
        if durable_client_json is None:
            raise RuntimeError(f"{fn.name} needs a durable client but the runtime has none")
        kwargs[client_param] = durable_client_json
    if fn.accepts_context:
        kwargs["context"] = InvocationContext(fn)
    return kwargs


class WorkerLoop:
    """The one event loop async functions run on, in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="function-worker-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


_worker: WorkerLoop | None = None
_worker_lock = threading.Lock()


def worker_loop() -> WorkerLoop:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = WorkerLoop()
        return _worker


async def ainvoke(fn: FunctionInfo, trigger_value: Any, *, durable_client_json: str | None = None) -> Any:
    """Call from any event loop: async functions run on the worker loop, sync ones in the default thread pool."""
    kwargs = build_kwargs(fn, trigger_value, durable_client_json)
    if fn.is_async:
        return await asyncio.wrap_future(worker_loop().submit(fn.func(**kwargs)))
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn.func(**kwargs))


def invoke(fn: FunctionInfo, trigger_value: Any, *, durable_client_json: str | None = None) -> Any:
    """Call from a plain thread (never from the worker loop itself): blocks until the function returns."""
    kwargs = build_kwargs(fn, trigger_value, durable_client_json)
    if fn.is_async:
        return worker_loop().submit(fn.func(**kwargs)).result()
    return fn.func(**kwargs)
