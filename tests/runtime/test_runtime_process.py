"""The local runtime as a process: HTTP → orchestration → activity → status through the real
DurableOrchestrationClient, and a ``kill -9`` in the middle of an orchestration, after which the instance completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools.services.process import REPO_ROOT, free_port

APPS = Path(__file__).parent / "apps"


class Runtime:
    def __init__(self, state: Path, calls: Path, port: int) -> None:
        self.state, self.calls, self.port = state, calls, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "DURABLE_SAMPLE_CALLS": str(self.calls),
            "PYTHONPATH": str(REPO_ROOT),
            # The leases of a killed runtime expire after this; the restarted one then takes its work over.
            "WRITEBACK_DEV_LEASE_SECONDS": "2",
        }
        log = (self.state / "runtime.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devhost",
                "--app-dir",
                str(APPS),
                "--module",
                "durable_sample_app",
                "--port",
                str(self.port),
                "--state-dir",
                str(self.state),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.state / "runtime.log").read_text()
            try:
                httpx.get(f"{self.base}/runtime/webhooks/durabletask/instances", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError((self.state / "runtime.log").read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    rt = Runtime(tmp_path, calls, free_port())
    rt.start()
    yield rt
    rt.stop()


def poll(url: str, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(url, timeout=5)
        if resp.status_code != 202 or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_http_starter_orchestration_activity_and_status(runtime: Runtime) -> None:
    resp = httpx.post(f"{runtime.base}/api/start/hello_sequence", json=["Ada", "Grace"], timeout=10)
    assert resp.status_code == 202, resp.text
    links = resp.json()
    assert links["statusQueryGetUri"].startswith(runtime.base)
    assert resp.headers["Location"] == links["statusQueryGetUri"]
    done = poll(links["statusQueryGetUri"])
    assert done.status_code == 200
    assert done.json()["runtimeStatus"] == "Completed"
    assert done.json()["output"] == ["Hello Ada!", "Hello Grace!"]
    # The same status through the app's own function using the SDK client's get_status.
    mine = httpx.get(f"{runtime.base}/api/status/{links['id']}", timeout=10).json()
    assert mine["runtimeStatus"] == "Completed" and mine["output"] == ["Hello Ada!", "Hello Grace!"]


def test_raise_event_through_the_sdk_client(runtime: Runtime) -> None:
    links = httpx.post(f"{runtime.base}/api/start/approval?id=appr-1", json=60, timeout=10).json()
    assert links["id"] == "appr-1"
    deadline = time.monotonic() + 10
    while httpx.get(links["statusQueryGetUri"]).json()["runtimeStatus"] != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.post(f"{runtime.base}/api/events/appr-1/approve", json="ok").status_code == 202
    assert poll(links["statusQueryGetUri"]).json()["output"] == {"decision": "ok"}
    again = httpx.post(f"{runtime.base}/api/start/approval?id=appr-1", json=60, timeout=10)
    assert again.status_code == 202  # a finished instance id may be started again (NonRunningStates)


def test_kill_9_mid_orchestration_then_restart_completes(runtime: Runtime) -> None:
    links = httpx.post(f"{runtime.base}/api/start/slow_then_hello", json=1.5, timeout=10).json()
    deadline = time.monotonic() + 10
    while "slow:start" not in runtime.calls.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runtime.kill9()
    runtime.start()
    done = poll(links["statusQueryGetUri"], timeout=30)
    assert done.json()["runtimeStatus"] == "Completed", done.text
    assert done.json()["output"] == "Hello after slow!"
    lines = runtime.calls.read_text().splitlines()
    # The activity cut off by the kill ran again (at least once); the next one ran exactly once.
    assert lines.count("slow:start:1.5") == 2 and lines.count("slow:end:1.5") == 1
    assert lines.count("say_hello:after slow") == 1
