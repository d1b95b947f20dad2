"""A target's rate limit holds for the whole deployment: two instances, 20 changes at once, a target configured at
4 calls/s, and the calls counted where they arrive (a recording proxy in front of the FHIR server)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import REPO_ROOT, Gateway, put_patient, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

RATE = 4
CHANGES = 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class RecordingProxy:
    """Forwards every request to the ``upstream`` origin (same path) and notes when it arrived (wall-clock seconds)."""

    def __init__(self, upstream: str) -> None:
        parts = httpx.URL(upstream)
        self.upstream = f"{parts.scheme}://{parts.netloc.decode()}"
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                with proxy._lock:
                    proxy.arrivals.append(time.time())
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = proxy._client.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-encoding":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._client.close()

    def most_in_one_second(self) -> int:
        times = sorted(self.arrivals)
        return max((sum(1 for t in times if start <= t < start + 1.0) for start in times), default=0)


@pytest.fixture
def slow_target(
    azurite: Any, token_endpoint: Any, fhir_server: Any, fhir_token: str, tmp_path: Path
) -> Iterator[tuple[Gateway, RecordingProxy]]:
    """Two instances writing to the local FHIR server through the proxy, the target configured at 4 calls/s."""
    targets = yaml.safe_load((REPO_ROOT / "config" / "targets.yaml").read_text())
    targets["targets"]["local-ehr"]["rate_limit_per_second"] = RATE
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(yaml.safe_dump(targets))
    state = tmp_path / "gateway"
    state.mkdir()
    with RecordingProxy(fhir_server.base_url) as proxy:
        fhir_path = httpx.URL(fhir_server.base_url).path
        gw = start_gateway(
            azurite,
            token_endpoint,
            fhir_server,
            fhir_token,
            state,
            instances=2,
            WRITEBACK_TARGETS_FILE=str(targets_file),
            WRITEBACK_TARGET_LOCAL_EHR_BASE_URL=proxy.url + fhir_path,
        )
        try:
            yield gw, proxy
        finally:
            stop_gateway(gw)


def test_two_instances_keep_to_the_targets_rate_together(slow_target: tuple[Gateway, RecordingProxy]) -> None:
    gw, proxy = slow_target
    patients = [put_patient(gw, f"p-{uuid.uuid4().hex[:12]}") for _ in range(CHANGES)]
    proxy.arrivals.clear()

    def change(patient: dict[str, Any]) -> str:
        body = {
            "target": "local-ehr",
            "operation": "patch",
            "resourceRef": f"Patient/{patient['id']}",
            "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0199"}],
        }
        return gw.submit(body).json()["changeId"]

    with ThreadPoolExecutor(CHANGES) as pool:
        change_ids = list(pool.map(change, patients))
    ended = [gw.wait(cid, timeout=240) for cid in change_ids]

    assert [(r["status"], r.get("error")) for r in ended] == [("completed", None)] * CHANGES
    assert len(proxy.arrivals) >= 2 * CHANGES, "every change read and wrote through the proxy"
    times = sorted(proxy.arrivals)
    assert proxy.most_in_one_second() <= RATE, [round(b - a, 3) for a, b in pairwise(times)]
