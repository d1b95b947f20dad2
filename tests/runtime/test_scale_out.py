"""Several runtime instances on one state folder (``python -m devhost --instances 2``), with the Durable sample app:
they share the port, the orchestrations and the activities; one killed with ``kill -9`` leaves the other serving and
taking its work over; groups pinned to instances run there only; the supervisor stops them all."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devhost.instances import live_instances, pid_alive
from shared.adapters.local_queue_publisher import LocalQueuePublisher
from shared.core.models import ChangeMessage
from tools.services.process import REPO_ROOT, free_port

APPS = Path(__file__).parent / "apps"


class Instances:
    """A supervisor running the Durable sample app on ``count`` instances."""

    def __init__(self, state: Path, count: int = 2, groups: str | None = None) -> None:
        self.state, self.count = state, count
        self.calls = state / "calls.txt"
        self.calls.write_text("")
        self.base = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "DURABLE_SAMPLE_CALLS": str(self.calls),
            "PYTHONPATH": str(REPO_ROOT),
            "WRITEBACK_DEV_LEASE_SECONDS": "2",
        }
        env.pop("WRITEBACK_DEV_INSTANCE_GROUPS", None)
        if groups:
            env["WRITEBACK_DEV_INSTANCE_GROUPS"] = groups
        argv = [sys.executable, "-m", "devhost", "--app-dir", str(APPS), "--module", "durable_sample_app"]
        argv += ["--port", self.base.rsplit(":", 1)[1], "--state-dir", str(state / "rt"), "--instances", str(count)]
        self.log = state / "runtime.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while len(self.live()) < count:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def live(self) -> list[dict[str, Any]]:
        return live_instances(self.state / "rt")

    def start(self, name: str, payload: Any, url: str | None = None) -> dict[str, Any]:
        resp = httpx.post(f"{url or self.base}/api/start/{name}", json=payload, timeout=10)
        assert resp.status_code == 202, resp.text
        links: dict[str, Any] = resp.json()
        return links

    def status(self, instance_id: str, url: str | None = None) -> dict[str, Any]:
        resp = httpx.get(f"{url or self.base}/runtime/webhooks/durabletask/instances/{instance_id}", timeout=10)
        body: dict[str, Any] = resp.json()
        return body

    def wait_done(self, instance_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll until the orchestration ends. A connection the kernel had queued for an instance that is then killed
        is reset (as a request in flight to a dying instance fails in Azure): the poll tries again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                body = self.status(instance_id)
            except httpx.TransportError:
                body = {"runtimeStatus": "unreachable"}
            if body["runtimeStatus"] in ("Completed", "Failed"):
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Instances]:
    instances = Instances(tmp_path)
    yield instances
    instances.stop()


def test_two_instances_list_themselves_and_serve_the_shared_port_and_their_own(two: Instances) -> None:
    live = two.live()
    assert sorted(i["index"] for i in live) == [0, 1]
    assert len({i["url"] for i in live}) == 2 and two.base not in {i["url"] for i in live}
    assert all(set(i["groups"]) == {"http", "durable", "servicebus", "timer"} for i in live)
    ids = [two.start("hello_sequence", [f"n{i}"])["id"] for i in range(10)]
    for i, instance_id in enumerate(ids):
        assert two.wait_done(instance_id)["output"] == [f"Hello n{i}!"]
    # Each instance's own URL answers for every orchestration, and starts them too: the state is shared.
    for instance in live:
        assert all(two.status(i, instance["url"])["runtimeStatus"] == "Completed" for i in ids)
        mine = two.start("hello_sequence", ["own"], url=instance["url"])["id"]
        assert two.wait_done(mine)["output"] == ["Hello own!"]


def test_a_killed_instance_leaves_the_other_serving_and_its_activity_is_taken_over(two: Instances) -> None:
    link = two.start("slow_then_hello", 1.5)
    deadline = time.monotonic() + 10
    while "slow:start" not in two.calls.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    holder = lease_holder(two)
    os.kill(holder["pid"], signal.SIGKILL)
    done = two.wait_done(link["id"], timeout=30)
    assert done["runtimeStatus"] == "Completed" and done["output"] == "Hello after slow!"
    lines = two.calls.read_text().splitlines()
    # Cut off by the kill, the activity ran again on the survivor once its lease lapsed; the next ran once.
    assert lines.count("slow:start:1.5") == 2 and lines.count("slow:end:1.5") == 1
    assert lines.count("say_hello:after slow") == 1
    survivors = two.live()
    assert [i["pid"] for i in survivors] != [holder["pid"]] and len(survivors) == 1
    assert two.proc.poll() is None, "the supervisor goes on with one instance"
    assert two.start("hello_sequence", ["again"])["id"]


def lease_holder(instances: Instances) -> dict[str, Any]:
    """The instance holding an activity lease, from the shared state."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(f"file:{instances.state / 'rt' / 'durable.db'}?mode=ro", uri=True) as db:
            owners = {r[0] for r in db.execute("SELECT leased_by FROM work WHERE leased_by IS NOT NULL")}
        holders = [i for i in instances.live() if i["owner"] in owners]
        if holders:
            return holders[0]
        assert time.monotonic() < deadline, "no instance holds the activity"
        time.sleep(0.02)


def test_pinned_groups_run_where_they_are_pinned_and_an_orchestration_crosses_instances(tmp_path: Path) -> None:
    pinned = Instances(tmp_path, groups="http;durable,servicebus,timer")
    try:
        live = {tuple(i["groups"]): i for i in pinned.live()}
        assert set(live) == {("http",), ("durable", "servicebus", "timer")}
        worker = live[("durable", "servicebus", "timer")]
        # The worker does not serve the app's HTTP functions, only the runtime's own routes.
        assert httpx.post(f"{worker['url']}/api/start/hello_sequence", json=["x"], timeout=10).status_code == 404
        # Started through the HTTP instance, run on the worker: the event raised through the HTTP instance reaches
        # the orchestration waiting on the other process.
        link = pinned.start("approval", 60)
        deadline = time.monotonic() + 10
        while pinned.status(link["id"])["runtimeStatus"] != "Running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(f"{pinned.base}/api/events/{link['id']}/approve", json="ok", timeout=10).status_code == 202
        assert pinned.wait_done(link["id"])["output"] == {"decision": "ok"}
    finally:
        pinned.stop()


def test_stopping_the_supervisor_stops_every_instance(two: Instances) -> None:
    pids = [i["pid"] for i in two.live()]
    two.stop()
    assert two.proc.returncode == 0
    assert not any(pid_alive(pid) for pid in pids)
    assert two.live() == []


def test_a_killed_supervisor_takes_its_instances_with_it(two: Instances) -> None:
    pids = [i["pid"] for i in two.live()]
    os.kill(two.proc.pid, signal.SIGKILL)
    two.proc.wait()
    deadline = time.monotonic() + 20
    while any(pid_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "an instance outlived its supervisor"
        time.sleep(0.1)


def test_the_app_publisher_reaches_the_one_queue_through_any_instance(two: Instances) -> None:
    """``WRITEBACK_LOCAL_RUNTIME_URL`` may name the shared URL or any instance's own: every one serves the queue."""
    urls = [two.base, *(i["url"] for i in two.live())]
    for n, url in enumerate(urls):
        with LocalQueuePublisher(url, "scale-out-check") as publisher:
            publisher.publish(ChangeMessage(change_id=f"change-{n}", target="local-ehr"))
    for url in urls:
        counts = httpx.get(f"{url}/runtime/servicebus/scale-out-check", timeout=10).json()
        assert counts["active"] == len(urls)
