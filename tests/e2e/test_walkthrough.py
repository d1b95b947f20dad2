"""docs/walkthrough.md works exactly as written: its shell blocks run, in order, against `make run`.

The only change made to the commands is the port numbers, so the test can run beside a developer's `make run`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tools.services.process import REPO_ROOT, dev_ports

WALKTHROUGH = REPO_ROOT / "docs" / "walkthrough.md"


def shell_blocks(text: str) -> list[str]:
    return [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if b.strip() != "make run"]


def json_documents(text: str) -> list[dict[str, object]]:
    """Every top-level JSON object printed in ``text`` (curl prints them without a trailing newline)."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(value, dict):
            found.append(value)
        i = end
    return found


@pytest.mark.e2e
def test_walkthrough_commands_work_as_written(tmp_path: Path) -> None:
    ports = dev_ports()
    api_port, fhir_port = ports["WRITEBACK_DEV_PORT"], ports["WRITEBACK_DEV_FHIR_PORT"]
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "WRITEBACK_DEV_STATE_DIR": str(tmp_path)}
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [sys.executable, "-m", "tools.services", "--with-gateway"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        script = "\n".join(shell_blocks(WALKTHROUGH.read_text()))
        script = script.replace("127.0.0.1:7071", f"127.0.0.1:{api_port}").replace(
            "127.0.0.1:8103", f"127.0.0.1:{fhir_port}"
        )
        script = script.replace("\ncurl ", "\necho; curl ")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr + result.stdout
        out = result.stdout
        documents = json_documents(out)
        statuses = [d.get("status") for d in documents if "changeId" in d and "links" in d]
        assert statuses.count("completed") == 2 and "rejected" in statuses and "planned" in statuses, statuses
        assert any(
            d.get("resourceType") == "Bundle" and d.get("total", len(d.get("entry", []))) >= 1 for d in documents
        )
        assert "HTTP/1.1 202" in out and "Idempotent-Replayed" not in out.split("HTTP/1.1 202", 1)[1].split("\n\n")[0]
        problems = [d for d in documents if d.get("status") == 400]
        assert problems and problems[0]["issues"][0]["path"] == "Patient.gender"
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGINT)
        run.wait(30)
