"""The local runtime finds the app object as the Python worker does: any module-level ``FunctionRegister``
(``func.FunctionApp``, ``df.DFApp``, ...) of the module, whatever its name; two of them (or one under two names) is
an error, and so is none, with the worker's messages (azure_functions_worker/loader.py, ``index_function_app``)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devhost.app_index import load_app
from tools.services.process import REPO_ROOT, free_port

APPS = Path(__file__).parent / "apps"


def test_an_app_not_named_app_is_found_and_indexed() -> None:
    index = load_app("renamed_app", APPS)
    module = importlib.import_module("renamed_app")
    assert index.app is module.gateway
    assert sorted(index.functions) == ["greet", "hello"]
    assert index.functions["hello"].trigger_type == "httpTrigger"
    assert index.functions["greet"].durable_name == "greet"


def test_two_function_apps_are_refused_with_the_workers_message() -> None:
    with pytest.raises(
        ValueError, match=r"^More than one FunctionApp or other top level function app instances are defined\.$"
    ):
        load_app("two_apps", APPS)


def test_one_app_under_two_names_is_refused_as_the_worker_refuses_it() -> None:
    with pytest.raises(ValueError, match=r"^More than one FunctionApp or other top level function app instances"):
        load_app("aliased_app", APPS)


def test_a_module_without_an_app_is_refused_with_the_workers_message() -> None:
    with pytest.raises(
        ValueError, match=r"^Could not find top level function app instances in blueprint_only_app\.py\.$"
    ):
        load_app("blueprint_only_app", APPS)


def runtime_command(module: str, port: int, state: Path) -> list[str]:
    app = ["--app-dir", str(APPS), "--module", module]
    return [sys.executable, "-m", "devhost", *app, "--port", str(port), "--state-dir", str(state)]


def test_the_runtime_serves_an_app_whatever_its_name(tmp_path: Path) -> None:
    """``python -m devhost`` as a user runs it, on a module whose app is called ``gateway``."""
    port = free_port()
    log = tmp_path / "runtime.log"
    proc = subprocess.Popen(
        runtime_command("renamed_app", port, tmp_path / "state"),
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/api/hello", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert (resp.status_code, resp.text) == (200, "hello from the app named gateway")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_runtime_will_not_start_on_two_apps(tmp_path: Path) -> None:
    result = subprocess.run(
        runtime_command("two_apps", free_port(), tmp_path / "state"),
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "More than one FunctionApp or other top level function app instances are defined." in result.stderr
