"""Start the local FHIR R4 server (``tools/fhir-server/server.mjs``, Medplum's router over memory) as a child process.

:class:`FhirServer` also drives the server's test controls: :meth:`FhirServer.reset` empties it,
:meth:`FhirServer.inject` makes the next requests fail or hang, :meth:`FhirServer.inject_random` makes a share of
all requests fail or hang until cleared, :meth:`FhirServer.stats` counts what reached it.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tools.services.process import REPO_ROOT, ManagedProcess, free_port, start_when_ready

HOST = "127.0.0.1"
BASE_PATH = "/fhir/R4"
SERVER_SCRIPT = REPO_ROOT / "tools" / "fhir-server" / "server.mjs"


@dataclass
class FhirServer:
    base_url: str  # http://127.0.0.1:P/fhir/R4
    control_url: str  # http://127.0.0.1:P/_control
    process: ManagedProcess
    # One client for the control calls: a new httpx client per call costs ~20 ms (SSL context set-up).
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0), init=False, repr=False)

    def stop(self) -> None:
        self._http.close()
        self.process.stop()

    def reset(self) -> None:
        """Empty the repository and clear faults and counters."""
        self._control("POST", "/reset")

    def inject(
        self,
        status: int | None = None,
        count: int = 1,
        retry_after: float | None = None,
        delay_ms: int | None = None,
        methods: list[str] | None = None,
        *,
        after: bool = False,
    ) -> None:
        """Make the next ``count`` FHIR requests (of ``methods``, or any) answer ``status`` and/or wait ``delay_ms``.

        With ``after=True`` the request is carried out first and the delay (and status, if given) applied to the
        answer: the client sees a timeout or an error although the write happened.
        """
        fault: dict[str, Any] = {"count": count, "after": after}
        if status is not None:
            fault["status"] = status
        if retry_after is not None:
            fault["retryAfter"] = retry_after
        if delay_ms is not None:
            fault["delayMs"] = delay_ms
        if methods is not None:
            fault["methods"] = [m.upper() for m in methods]
        self._control("POST", "/faults", json=fault)

    def inject_random(self, rules: list[dict[str, Any]], seed: int | None = None) -> dict[str, Any]:
        """Make a share of the FHIR requests fail or hang, until :meth:`clear_faults`.

        Each rule: ``probability`` (0 < p <= 1), and ``status`` and/or ``delay_ms``, optionally ``retry_after``,
        ``methods``, ``after`` (as for :meth:`inject`) and ``count`` (fire at most that often). A request draws once
        and takes the first rule whose cumulative probability covers the draw, so ``[{"probability": 0.3,
        "status": 429}, {"probability": 0.1, "status": 503}]`` fails 30 % of the requests with 429 and 10 % with
        503; the probabilities may add up to 1 at most. ``seed`` makes the draws repeatable. Counted rules from
        :meth:`inject` go first. Returns the stored rules and the seed.
        """
        names = {"retry_after": "retryAfter", "delay_ms": "delayMs"}
        wire = []
        for rule in rules:
            converted = {names.get(k, k): v for k, v in rule.items()}
            if "methods" in converted:
                converted["methods"] = [m.upper() for m in converted["methods"]]
            wire.append(converted)
        spec: dict[str, Any] = {"rules": wire}
        if seed is not None:
            spec["seed"] = seed
        result: dict[str, Any] = self._control("POST", "/faults", json=spec).json()
        return result

    def clear_faults(self) -> None:
        self._control("DELETE", "/faults")

    def stats(self) -> dict[str, Any]:
        """``{"requests", "byMethod", "byStatus", "faultsServed", "faultsByKind", "seed", "pendingFaults"}``.

        ``faultsByKind`` counts the faults served by kind: ``"429"``, ``"503"``, ``"delay"``, ``"504+delay+after"``...
        """
        result: dict[str, Any] = self._control("GET", "/stats").json()
        return result

    def reset_stats(self) -> None:
        self._control("POST", "/stats/reset")

    def _control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, f"{self.control_url}{path}", **kwargs)
        response.raise_for_status()
        return response


@functools.cache
def _node_argv() -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; the local FHIR server needs Node.js 20 or newer")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    # Medplum's packages reference the global WebSocket, which Node 20 and 21 only define behind this flag.
    return [node, "--experimental-websocket"] if major < 22 else [node]


def start_fhir_server(
    port: int | None = None,
    *,
    jwks_url: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    log_dir: Path | None = None,
) -> FhirServer:
    """Start the FHIR server on 127.0.0.1 and wait until it answers ``/healthz``.

    With ``jwks_url`` and ``audience`` every FHIR request needs a bearer token signed by a key in that JWKS.
    """
    if (jwks_url is None) != (audience is None):
        raise ValueError("jwks_url and audience go together")
    port = port or free_port()
    argv = [*_node_argv(), str(SERVER_SCRIPT), "--port", str(port), "--host", HOST, "--base", BASE_PATH]
    if jwks_url is not None and audience is not None:
        argv += ["--jwks-url", jwks_url, "--audience", audience]
        if issuer is not None:
            argv += ["--issuer", issuer]
    origin = f"http://{HOST}:{port}"
    process = start_when_ready("fhir-server", argv, f"{origin}/healthz", timeout=60, log_dir=log_dir)
    return FhirServer(base_url=f"{origin}{BASE_PATH}", control_url=f"{origin}/_control", process=process)
