"""The dispatcher (``orchestrators/dispatcher.py``) run by the local runtime: a queued change goes through the local
Service Bus to ``dispatch_change``, whose real ``DurableOrchestrationClient`` starts the orchestration over the
local runtime's Durable HTTP API.

When a start fails, what decides is whether the change's instance exists afterwards, not the error's text: a start
whose answer was lost did start the change, and an error that merely says "already exists" (a storage error from
the task hub, say) did not. Faults are put in front of the start route; the engine is not running, so a started
instance stays ``Pending`` and the real orchestrator (which needs Azurite) never runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.durable_functions.models.utils import http_utils
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from devhost.app_index import AppIndex, load_app
from devhost.durable.client_api import client_binding_json, durable_routes
from devhost.durable.engine import DurableEngine
from devhost.http_server import ServerHandle, serve
from devhost.invoke import worker_loop
from devhost.servicebus import LocalServiceBus
from devhost.servicebus_trigger import ServiceBusTriggerPump
from shared import bootstrap
from shared.app.journal import ChangeJournal, Step
from shared.core.models import ChangeMessage, ChangeStatus
from shared.fakes.stores import FakeChangeStore
from tests.records import a_change_record
from tools.services.process import REPO_ROOT

QUEUE = "dispatch-test-changes"
TASK_HUB = "DispatchTestHub"
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


@dataclass
class StartFault:
    """The next ``count`` orchestration starts answer 500 with ``text``; with ``carry_out`` the start happens first."""

    text: str
    carry_out: bool = False
    count: int = 1


class DurableApi:
    """The local runtime's Durable HTTP API with injectable start faults; counts the start requests it gets."""

    def __init__(self, engine: DurableEngine) -> None:
        self.app = Starlette(routes=durable_routes(engine))
        self.fault: StartFault | None = None
        self.starts = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_start = scope["type"] == "http" and scope["method"] == "POST" and "/orchestrators/" in scope["path"]
        if is_start:
            self.starts += 1
        fault = self.fault if is_start else None
        if fault is None:
            await self.app(scope, receive, send)
            return
        fault.count -= 1
        if fault.count <= 0:
            self.fault = None
        if fault.carry_out:

            async def discard(message: Message) -> None:
                pass

            await self.app(scope, receive, discard)
        body = {"Message": "An error has occurred.", "ExceptionMessage": fault.text}
        await JSONResponse(body, 500)(scope, receive, send)


@pytest.fixture(scope="module", autouse=True)
def _close_the_client_session() -> Iterator[None]:
    """The SDK keeps one aiohttp session on the worker loop; close it so no unclosed connector is reported at exit
    (the SDK opens a new one when next needed)."""
    yield
    session = http_utils._client_session
    if session is not None and not session.closed:
        worker_loop().submit(session.close()).result(5)


@pytest.fixture(scope="module")
def index() -> AppIndex:
    full = load_app("function_app", REPO_ROOT)
    return AppIndex(functions={"dispatch_change": full.functions["dispatch_change"]}, app=full.app)


@pytest.fixture
def engine(tmp_path: Path) -> DurableEngine:
    # function_app's orchestrators, but the engine is not started: started instances stay Pending.
    return DurableEngine(load_app("function_app", REPO_ROOT), tmp_path / "durable.db", task_hub=TASK_HUB)


@pytest.fixture
def api(engine: DurableEngine) -> Iterator[tuple[DurableApi, ServerHandle]]:
    durable = DurableApi(engine)
    handle = serve(durable, port=0).start()
    try:
        handle.wait_ready()
        yield durable, handle
    finally:
        handle.stop()


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> ChangeJournal:
    monkeypatch.setenv("WRITEBACK_QUEUE_NAME", QUEUE)
    gateway = bootstrap.build(change_store=FakeChangeStore())
    monkeypatch.setattr(bootstrap, "gateway", lambda: gateway)
    return gateway.journal


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[LocalServiceBus]:
    with LocalServiceBus(tmp_path / "sb.db", lock_duration=5, max_delivery_count=2) as b:
        yield b


def accepted(journal: ChangeJournal, change_id: str) -> None:
    record = a_change_record(change_id, target="local-ehr", status=ChangeStatus.ACCEPTED, at=NOW)
    journal.open(record, Step("accepted"))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def dispatch(index: AppIndex, bus: LocalServiceBus, handle: ServerHandle, change_id: str) -> dict[str, int]:
    """Queue the change's message, let the runtime deliver it until it is completed or dead-lettered."""
    body = ChangeMessage(change_id=change_id, target="local-ehr").model_dump_json(by_alias=True).encode()
    bus.send(QUEUE, body=body, message_id=change_id)
    client_json = client_binding_json(f"http://127.0.0.1:{handle.port}", TASK_HUB)
    with ServiceBusTriggerPump(index, bus, poll_interval=0.01, durable_client_json=lambda: client_json):
        wait_until(lambda: bus.counts(QUEUE)["active"] + bus.counts(QUEUE)["locked"] == 0)
    return bus.counts(QUEUE)


def status(engine: DurableEngine, change_id: str) -> str | None:
    body: dict[str, Any] | None = engine.status(change_id)
    return None if body is None else str(body["runtimeStatus"])


def test_a_start_refused_because_the_instance_exists_completes_the_message(
    index: AppIndex, engine: DurableEngine, api: tuple[DurableApi, ServerHandle], journal: ChangeJournal, bus: Any
) -> None:
    durable, handle = api
    accepted(journal, "c-exists")
    engine.start_instance("writeback_orchestrator", "c-exists", None)  # an earlier delivery started it
    assert dispatch(index, bus, handle, "c-exists")["deadLetter"] == 0
    assert durable.starts == 1  # the runtime's own 409 ("... already exists"), then nothing more
    assert status(engine, "c-exists") == "Pending"


def test_a_start_whose_answer_was_lost_is_a_success_by_the_instance_status(
    index: AppIndex, engine: DurableEngine, api: tuple[DurableApi, ServerHandle], journal: ChangeJournal, bus: Any
) -> None:
    durable, handle = api
    accepted(journal, "c-lost")
    durable.fault = StartFault("A task was canceled.", carry_out=True)
    assert dispatch(index, bus, handle, "c-lost")["deadLetter"] == 0
    assert status(engine, "c-lost") == "Pending"
    assert durable.starts == 1  # not retried: the instance exists, whatever the error said


def test_an_already_exists_error_without_an_instance_is_retried(
    index: AppIndex, engine: DurableEngine, api: tuple[DurableApi, ServerHandle], journal: ChangeJournal, bus: Any
) -> None:
    durable, handle = api
    accepted(journal, "c-storage")
    durable.fault = StartFault("The specified entity already exists.")  # e.g. a task hub storage error
    assert dispatch(index, bus, handle, "c-storage")["deadLetter"] == 0
    assert status(engine, "c-storage") == "Pending"
    assert durable.starts == 2  # the message came back and the second delivery started the change


def test_a_failed_start_without_an_instance_is_retried_until_dead_lettered(
    index: AppIndex, engine: DurableEngine, api: tuple[DurableApi, ServerHandle], journal: ChangeJournal, bus: Any
) -> None:
    durable, handle = api
    accepted(journal, "c-down")
    durable.fault = StartFault("The task hub is not reachable.", count=2)
    assert dispatch(index, bus, handle, "c-down")["deadLetter"] == 1
    assert durable.starts == 2
    assert status(engine, "c-down") is None
