"""`make run` as a user runs it: every local service and the gateway come up, answer, and stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devhost.instances import live_instances, pid_alive
from tools.services.process import REPO_ROOT, dev_ports, port_open


@pytest.mark.e2e
@pytest.mark.parametrize("instances", [1, 2])
def test_run_starts_services_and_gateway_and_ctrl_c_stops_them(instances: int, tmp_path: Path) -> None:
    """``make run`` and ``make run INSTANCES=2`` (which sets WRITEBACK_DEV_INSTANCES)."""
    ports = dev_ports()
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "WRITEBACK_DEV_STATE_DIR": str(tmp_path)}
    env["WRITEBACK_DEV_INSTANCES"] = str(instances)
    env.pop("WRITEBACK_DEV_INSTANCE_GROUPS", None)
    gateway_pids: list[int] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.services", "--with-gateway"],
        cwd=REPO_ROOT,
        env=env,
        stdout=(tmp_path / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        endpoints_file = tmp_path / "endpoints.json"
        deadline = time.monotonic() + 60
        while not endpoints_file.exists() or proc.poll() is not None:
            assert proc.poll() is None, (tmp_path / "run.log").read_text(errors="replace")
            assert time.monotonic() < deadline
            time.sleep(0.1)
        endpoints = json.loads(endpoints_file.read_text())
        api = endpoints["api"]
        while True:
            try:
                health = httpx.get(f"{api}/health", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.status_code == 200, health.text
        assert health.json()["dependencies"]["tableStorage"] == {"state": "ok"}
        assert httpx.get(endpoints["fhir"]["local-ehr"] + "/metadata", timeout=5).status_code == 200
        gateway_pids += [i["pid"] for i in live_instances(tmp_path / "runtime")]
        assert len(gateway_pids) == instances
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, (tmp_path / "run.log").read_text(errors="replace")
    # Nothing it started is left listening, or running.
    still_open = [name for name, port in ports.items() if port_open(port)]
    assert still_open == []
    assert not any(pid_alive(pid) for pid in gateway_pids)
